//! The reactor: one thread owning the I/O engine, every lockspace and lease operation, the
//! client socket and its connections. It sleeps in poll(2) on the engine's completion eventfd,
//! the listening socket, the connections, a signalfd, the supervisor's wake-up eventfd and
//! the pidfds of processes that hold leases on someone else's behalf, with a timeout at the
//! next protocol timer. Nothing in it blocks on storage: device opens and the first read of an
//! area (to learn its geometry) run on short-lived probe threads.
//!
//! Invariants:
//! - A connection has at most one request in progress; further frames wait in its buffer.
//! - A lease belongs to a connection (released when it closes) or, when acquired on behalf
//!   of another pid, to that pid (released when it exits); its holder pid is registered with
//!   the supervisor before the reply goes out, and removed only when the pid holds no other
//!   lease in that lockspace.
//! - A lease of a lost lockspace is never released on disk and never given back to anyone:
//!   it is dropped only when the supervisor reports every holder dead.
//! - Client input never panics the daemon; limits on connections, frame size and buffers.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::EventFd;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use serde_json::json;
use tenure_core::clock::{MonotonicClock, Time};
use tenure_core::delta::HostStatus;
use tenure_core::dev::{Access, Device};
use tenure_core::direct::{BackendKind, DirectDisk};
use tenure_core::io::{open_backend, EngineConfig};
use tenure_core::lockspace::{HeldResource, LockspaceSet, LockspaceState, OpId};
use tenure_format::{Geometry, LeaderRecord, Name, ResourceSpec};

use crate::config::Config;
use crate::host::command::{Command, RindexCommand};
use crate::host::handover::{self, STATE_FILE};
use crate::host::registry::{ClientKey, Owner};
use crate::host::reply::{Done, Reply};
use crate::host::{ClientInfo, Host, HostConfig, Output, ProbeKey};
use crate::proto::{self, Decoded, ErrorCode, ErrorReply, Request, Split, PROTOCOL_VERSION};
use crate::supervise::{Supervisor, SupervisorConfig};

mod rindex;
mod sanlock;

/// Which protocol a connection speaks.
#[derive(Debug)]
enum Proto {
    /// tenured's native protocol (docs/protocol.md).
    Native,
    /// sanlock's client protocol (spec/SANLOCK-WIRE.md).
    Sanlock(sanlock::SanlockConn),
}

/// A request of the front end waiting for probes (device open, geometry) before it can run
/// (the host keeps its own commands waiting: `Host::execute`).
#[derive(Debug)]
enum Deferred {
    /// A resource index request holding the index's private lease.
    Rindex(RindexCommand),
}

/// Connections at once.
pub const CLIENTS_MAX: usize = 256;
/// Leases held at once.
pub use crate::host::LEASES_MAX;
/// Probe threads at once.
const PROBES_MAX: usize = 16;
/// Unsent reply bytes before a connection that does not read is dropped.
const OUTBUF_MAX: usize = 1 << 20;

/// Server errors (start-up; the running reactor reports per request).
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Setting something up failed.
    #[error("{what}: {source}")]
    Setup {
        /// What.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// The engine failed.
    #[error("I/O engine: {0}")]
    Engine(String),
    /// Configuration.
    #[error("{0}")]
    Config(String),
}

fn setup(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServerError {
    let what = what.into();
    move |source| ServerError::Setup { what, source }
}

#[derive(Debug)]
struct Conn {
    serial: u64,
    stream: UnixStream,
    hello: bool,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    /// A request is in progress (reply comes later).
    busy: bool,
    /// Close once the output is flushed.
    closing: bool,
    /// A request waiting for probes to finish.
    deferred: Option<Deferred>,
    /// The protocol it speaks.
    proto: Proto,
    /// The request being answered: its kind and arrival (metrics).
    op: Option<(&'static str, std::time::Instant)>,
}

/// An operation a front end started itself (crate::host::Pending::Front).
#[derive(Debug)]
enum FrontOp {
    /// Acquiring a resource index's private lease.
    Rindex {
        client: ClientKey,
        space: String,
        job: Box<rindex::RindexJob>,
    },
    /// Releasing it; then `reply` goes out.
    RindexRelease {
        client: ClientKey,
        space: String,
        reply: Box<Reply>,
    },
}

/// A reply computed on a helper thread.
#[derive(Debug)]
enum JobReply {
    /// For a native client.
    Native(Reply),
    /// For a sanlock client: result, data2, payload.
    Sanlock(i32, u32, Vec<u8>),
    /// A request record was written (or the lease was free): the owner to signal through our
    /// bitmap in `space`, or the sanlock result of the failure.
    Requested {
        space: String,
        result: Result<Option<u64>, i32>,
    },
    /// The request record of a lease we hold, read after another host set our bit.
    Examined {
        space: String,
        resource: Name,
        record: Option<tenure_format::paxos::RequestRecord>,
    },
    /// A resource index operation ran under its private lease, which is to be released.
    RindexDone {
        space: String,
        held: Box<HeldResource>,
        reply: Reply,
    },
}

#[derive(Debug)]
struct ProbeResult {
    key: ProbeKey,
    device: Option<Result<Device, String>>,
    geometry: Result<Geometry, String>,
}

/// The engine tenured drives its lockspaces and leases on: a 256-entry ring, 512 sector
/// buffers, 64 area buffers of 1 MiB and 8 of 8 MiB. An I/O that finds no room waits for some
/// ([`tenure_core::paxos::disks::Issued::Deferred`]).
pub fn engine_config() -> EngineConfig {
    EngineConfig {
        ring_entries: 256,
        buffer_classes: vec![(4096, 512), (1 << 20, 64), (8 << 20, 8)],
        sync_workers: 4,
    }
}

/// The running daemon.
#[derive(Debug)]
pub struct Server {
    cfg: Config,
    clock: MonotonicClock,
    /// `$TENURE_CAPTURE_DIR`: every connection's bytes are kept there (the first 64 KiB
    /// of each, one file per connection under `native_frame/` or `sanlock_wire/`), the seed
    /// corpus of the decoders' fuzz targets (daemon/fuzz). Tests set it; off otherwise.
    capture_dir: Option<PathBuf>,
    /// Every decision (crate::host).
    host: Host,
    backend_name: &'static str,
    fallback_reason: Option<String>,
    listener: UnixListener,
    socket_path: PathBuf,
    /// The sanlock-compatible socket, when enabled.
    sanlock_listener: Option<(UnixListener, PathBuf)>,
    /// INQ_LOCKSPACE with INQ_WAIT: (client, lockspace name).
    inq_waiters: Vec<(ClientKey, String)>,
    /// sanlock SHUTDOWN_WAIT callers answered when tenured exits.
    shutdown_waiters: Vec<(ClientKey, crate::sanlock_wire::Header)>,
    conns: Vec<Option<Conn>>,
    next_serial: u64,
    /// sanlock event fds registered per lockspace (REG_EVENT); closed when it goes.
    event_fds: HashMap<String, Vec<UnixStream>>,
    /// Operations the front ends started themselves (the resource index's lease).
    front_ops: HashMap<OpId, FrontOp>,
    probing: HashMap<ProbeKey, ()>,
    probe_tx: Sender<ProbeResult>,
    probe_rx: Receiver<ProbeResult>,
    /// Replies computed on helper threads (direct reads that may block on storage).
    job_tx: Sender<(ClientKey, JobReply)>,
    job_rx: Receiver<(ClientKey, JobReply)>,
    jobs_running: usize,
    wake: Arc<EventFd>,
    signals: SignalFd,
    /// Pids holding leases acquired on their behalf, watched for exit.
    watched: HashMap<i32, OwnedFd>,
    started: Time,
    /// The state file (crate::host::handover): what a successor adopts after a crash.
    state_path: PathBuf,
    /// [`Host::state_epoch`] of the state last written.
    state_written: Option<u64>,
    /// What the state file says (appended to, compacted now and then).
    state_journal: handover::StateJournal,
    /// The state file, open for appending once a whole state was written.
    state_file: Option<std::fs::File>,
    /// Start times of holder pids (clock ticks since boot), for the state file.
    holder_ticks: HashMap<i32, u64>,
    boot_id: String,
    /// Our own start time.
    own_ticks: u64,
    /// What was adopted from a predecessor, for `status`.
    adopted: Option<serde_json::Value>,
    /// A planned upgrade waiting for nothing to be in flight (crate::upgrade).
    upgrade: Option<PendingUpgrade>,
    /// Configured lockspaces to join again after they were lost or their join failed.
    rejoins: std::collections::BTreeMap<String, Rejoin>,
    /// This binary and its arguments (a SIGHUP upgrade starts the binary at the same path).
    exe: PathBuf,
    args: Vec<std::ffi::OsString>,
    /// Counters and histograms (crate::metrics), rendered with the gauges of the moment.
    metrics: crate::metrics::Metrics,
    /// Scrapes of the HTTP endpoint waiting for a rendering.
    scrape_rx: Receiver<crate::metrics::ScrapeRequest>,
}

/// A configured lockspace to join again (docs/operations.md "Automatic rejoin").
#[derive(Debug, Clone)]
struct Rejoin {
    /// When the next attempt starts (None: an attempt's join runs).
    due: Option<Time>,
    /// The wait before the next attempt after a failure (doubles, at most REJOIN_BACKOFF_MAX).
    backoff: Duration,
    /// Attempts made.
    attempts: u32,
    /// Why the lockspace went, or why the last attempt failed.
    reason: String,
}

/// The longest wait between two rejoin attempts.
const REJOIN_BACKOFF_MAX: Duration = Duration::from_secs(300);

/// An upgrade asked for and not yet handed over.
#[derive(Debug)]
struct PendingUpgrade {
    /// Who asked (SIGHUP: nobody).
    requester: Option<ClientKey>,
    /// The binary to start.
    binary: PathBuf,
    asked: std::time::Instant,
    asked_at: Time,
    /// No new client or request is taken in any more (once no renewal is due soon).
    intake_stopped: bool,
}

/// What a new tenured received from the one it replaces (crate::upgrade).
#[derive(Debug)]
pub struct Inherited {
    doc: crate::upgrade::Handover,
    fds: Vec<OwnedFd>,
}

/// The state file a predecessor left, if it may be adopted (crate::host::handover); any
/// other one is removed, with the reason logged.
fn inherited_state(path: &Path, boot_id: &str) -> Option<handover::HostState> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "cannot read the state file of a previous tenured");
            return None;
        }
    };
    let checked = handover::HostState::parse(&bytes).and_then(|st| {
        st.adoptable(boot_id)?;
        Ok(st)
    });
    match checked {
        Ok(st) => Some(st),
        Err(e @ handover::StateError::WriterRunning(_)) => {
            tracing::error!(path = %path.display(), error = %e, "the state file belongs to a running tenured");
            None
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "the state file of a previous tenured is not adopted");
            let _ = std::fs::remove_file(path);
            None
        }
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn err(code: ErrorCode, message: impl Into<String>) -> Reply {
    Reply::Error(ErrorReply::new(code, message))
}

fn probe(key: ProbeKey, need_device: bool) -> ProbeResult {
    let device =
        need_device.then(|| Device::open(&key.0, Access::ReadWrite).map_err(|e| e.to_string()));
    // A lease area's leader, or a resource index header (its geometry is what counts).
    let geometry = (|| {
        let mut d = DirectDisk::open_small(&key.0, Access::Read, BackendKind::Auto)
            .map_err(|e| e.to_string())?;
        d.read(key.1, 4096, |b| match LeaderRecord::decode(b) {
            Ok(l) => Geometry::from_leader_fields(l.sector_size, l.flags)
                .map_err(|e| format!("unsupported geometry: {e}")),
            Err(e) => match tenure_format::rindex::RindexHeader::decode(b) {
                Ok(h) => h
                    .geometry()
                    .map_err(|e| format!("unsupported geometry: {e}")),
                Err(_) => Err(format!("no lease area here: {e}")),
            },
        })
        .map_err(|e| e.to_string())?
    })();
    ProbeResult {
        key,
        device,
        geometry,
    }
}

impl Server {
    /// Sets up the engine, the socket, the signal handling and the supervisor. Call from the
    /// main thread before any other thread is started (SIGTERM/SIGINT are blocked here and
    /// read from a signalfd; threads inherit the mask).
    pub fn new(cfg: Config, backend: BackendKind) -> Result<Self, ServerError> {
        Self::build(cfg, backend, None)
    }

    /// A new tenured taking over from the running one (`tenured --takeover SOCKET`, started
    /// by its `upgrade`): receives everything over `socket`, builds the server around it,
    /// answers `ready` and waits for `go`. Any failure is answered `error: ...` and returned:
    /// the old one goes on serving.
    pub fn take_over(
        cfg: Config,
        backend: BackendKind,
        socket: &Path,
    ) -> Result<Self, ServerError> {
        let deadline = std::time::Instant::now() + crate::upgrade::CONFIRM_MAX;
        let mut chan = UnixStream::connect(socket).map_err(setup(format!(
            "connecting to the old tenured at {}",
            socket.display()
        )))?;
        let fail = |chan: &mut UnixStream, e: String| {
            let line = format!("error: {}\n", e.replace('\n', " "));
            let _ = chan.write_all(line.as_bytes());
            ServerError::Config(e)
        };
        let (doc, fds) = match crate::upgrade::receive(&mut chan, deadline) {
            Ok(x) => x,
            Err(e) => return Err(fail(&mut chan, e.to_string())),
        };
        let requester = doc.requester;
        let from = (doc.host.pid, doc.from_version.clone(), doc.asked_at_ns);
        let mut server = match Self::build(cfg, backend, Some(Inherited { doc, fds })) {
            Ok(s) => s,
            Err(e) => return Err(fail(&mut chan, e.to_string())),
        };
        chan.write_all(b"ready\n")
            .map_err(setup("answering the old tenured"))?;
        match crate::upgrade::read_line(&mut chan, deadline) {
            Ok(l) if l == "go" => {}
            Ok(l) => {
                return Err(ServerError::Config(format!(
                    "the old tenured answered {l:?}, not go: not serving"
                )))
            }
            Err(e) => {
                return Err(ServerError::Config(format!(
                    "no go from the old tenured ({e}): not serving"
                )))
            }
        }
        // Ours from here on.
        server.persist();
        let took_ms = server.clock.now().as_nanos().saturating_sub(from.2) / 1_000_000;
        tracing::warn!(from_pid = from.0, from_version = %from.1, took_ms, "took over from the previous tenured: serving");
        if let Some(serial) = requester {
            let k = (0..server.conns.len())
                .filter_map(|i| server.key(i))
                .find(|k| k.serial == serial);
            if let Some(k) = k {
                let r = Reply::Done(Done::View(json!({
                    "upgraded": true,
                    "from_pid": from.0,
                    "from_version": from.1,
                    "pid": std::process::id(),
                    "version": env!("CARGO_PKG_VERSION"),
                    "took_ms": took_ms,
                })));
                server.reply(k, r);
            }
        }
        Ok(server)
    }

    fn build(
        cfg: Config,
        backend: BackendKind,
        mut inherited: Option<Inherited>,
    ) -> Result<Self, ServerError> {
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGTERM);
        mask.add(Signal::SIGINT);
        mask.add(Signal::SIGHUP);
        mask.thread_block().map_err(|e| ServerError::Setup {
            what: "blocking signals".into(),
            source: e.into(),
        })?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|e| ServerError::Setup {
            what: "signalfd".into(),
            source: e.into(),
        })?;
        let host_name = tenure_core::hostname::host_name(cfg.host_name.as_deref())
            .map_err(|e| ServerError::Config(format!("host name: {e}")))?;
        let engine = engine_config();
        let (set_backend, choice) = open_backend(Vec::new(), &engine, backend)
            .map_err(|e| ServerError::Engine(e.to_string()))?;
        if let Some(r) = &choice.fallback_reason {
            tracing::warn!(reason = %r, "io_uring unavailable: using the pread/pwrite fallback");
        }
        std::fs::create_dir_all(&cfg.run_dir)
            .map_err(setup(format!("creating {}", cfg.run_dir.display())))?;
        let tmpfs = nix::sys::statfs::statfs(&cfg.run_dir)
            .is_ok_and(|f| f.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC);
        if !tmpfs {
            tracing::warn!(run_dir = %cfg.run_dir.display(), "run_dir is not on tmpfs: a reboot may not clear it (the boot id guards the marker and the state file), and rewriting the state file before each grant's reply costs a data flush on most disk file systems; use /run/tenure");
        }
        std::fs::create_dir_all(&cfg.state_dir)
            .map_err(setup(format!("creating {}", cfg.state_dir.display())))?;
        let socket_path = cfg.socket_path();
        // What the old tenured hands over comes in the order crate::upgrade::Handover lists.
        let mut fds = inherited
            .as_mut()
            .map(|i| std::mem::take(&mut i.fds))
            .unwrap_or_default()
            .into_iter();
        let mut next_fd = |what: &str| {
            fds.next().ok_or_else(|| {
                ServerError::Config(format!("the old tenured handed over no fd for {what}"))
            })
        };
        let listener = match &inherited {
            Some(_) => UnixListener::from(next_fd("the socket")?),
            None => bind(&socket_path, cfg.socket_group.as_deref(), 0o600)?,
        };
        let inherited_sanlock = match &inherited {
            Some(i) if i.doc.sanlock_listener => {
                Some(UnixListener::from(next_fd("the sanlock socket")?))
            }
            _ => None,
        };
        let inherited_watchdog = match &inherited {
            Some(i) if i.doc.watchdog_fd => Some(next_fd("the watchdog")?),
            _ => None,
        };
        let sanlock_listener = match cfg.sanlock_socket_dir() {
            Some(dir) if inherited_sanlock.is_some() => {
                let p = dir.join("sanlock.sock");
                inherited_sanlock.map(|l| (l, p))
            }
            Some(dir) => {
                std::fs::create_dir_all(&dir)
                    .map_err(setup(format!("creating {}", dir.display())))?;
                let p = dir.join("sanlock.sock");
                let l = bind(&p, cfg.socket_group.as_deref(), 0o660)?;
                tracing::info!(socket = %p.display(), "sanlock-compatible socket enabled");
                Some((l, p))
            }
            None => None,
        };
        let wake = Arc::new(
            EventFd::from_value_and_flags(
                0,
                nix::sys::eventfd::EfdFlags::EFD_CLOEXEC
                    | nix::sys::eventfd::EfdFlags::EFD_NONBLOCK,
            )
            .map_err(|e| ServerError::Setup {
                what: "eventfd".into(),
                source: e.into(),
            })?,
        );
        let watchdog = match cfg.watchdog.kind.as_str() {
            "device" => tenure_watchdog::WatchdogSpec::Device(cfg.watchdog.device.clone()),
            "emulated" => tenure_watchdog::WatchdogSpec::Emulated(cfg.emulated_socket()),
            _ => {
                tracing::warn!("watchdog = none: NOTHING FENCES THIS HOST if it loses a lockspace with leases held (tests only)");
                tenure_watchdog::WatchdogSpec::None
            }
        };
        let state_path = cfg.run_dir.join(STATE_FILE);
        let boot_id = tenure_watchdog::marker::boot_id();
        // After a crash, the state file; in an upgrade, what the old process sent.
        let crashed = match &inherited {
            Some(_) => None,
            None => inherited_state(&state_path, &boot_id),
        };
        let handed_over = inherited.as_ref().map(|i| crate::supervise::HandedOver {
            from: (i.doc.host.pid, i.doc.host.pid_start_ticks),
            fd: inherited_watchdog,
        });
        let sup = Supervisor::start(
            SupervisorConfig {
                predecessor: crashed.as_ref().map(|s| (s.pid, s.pid_start_ticks)),
                handed_over,
                watchdog,
                fire_timeout_s: cfg.watchdog.fire_timeout_s,
                marker_dir: cfg.run_dir.clone(),
                state_dir: cfg.state_dir.clone(),
                kill_grace: Duration::from_secs(cfg.supervision.kill_grace_s),
                sigkill_max: cfg.supervision.sigkill_max,
            },
            Arc::clone(&wake),
        )
        .map_err(setup("starting the supervisor thread"))?;
        let (probe_tx, probe_rx) = channel();
        let (job_tx, job_rx) = channel();
        let clock = MonotonicClock;
        let no_exclusion =
            std::env::var_os("TENURE_UNSAFE_NO_LOCAL_EXCLUSION").is_some_and(|v| v == "1");
        if no_exclusion {
            tracing::error!("TENURE_UNSAFE_NO_LOCAL_EXCLUSION=1: two processes of this host may be granted one exclusive lease (a test of the check; never in production)");
        }
        let wall_epoch_ms = unix_ms().saturating_sub(clock.now().as_nanos() / 1_000_000);
        let metrics = crate::metrics::Metrics::new();
        let set_backend: Box<dyn tenure_core::io::IoBackend + Send> =
            Box::new(crate::metrics::MeteredBackend::new(set_backend, &metrics));
        let mut host = Host::new(
            HostConfig {
                host_name,
                io_timeout_s: cfg.io_timeout_s,
                other_hosts_fire_timeout_s: cfg.other_hosts_fire_timeout_s(),
                no_local_exclusion: no_exclusion,
            },
            LockspaceSet::new(set_backend),
            Box::new(sup),
            wall_epoch_ms,
        );
        host.set_metrics(metrics.clone());
        let (scrape_tx, scrape_rx) = channel();
        if let Some(addr) = cfg.metrics.listen {
            crate::metrics::serve(addr, scrape_tx, Arc::clone(&wake))
                .map_err(|e| ServerError::Config(e.to_string()))?;
        }
        let me = std::process::id() as i32;
        let exe = std::env::current_exe()
            .map(|p| {
                // A binary replaced on disk (a package upgrade) reads "... (deleted)".
                let s = p.to_string_lossy();
                PathBuf::from(s.strip_suffix(" (deleted)").unwrap_or(&s).to_owned())
            })
            .unwrap_or_else(|_| PathBuf::from("/usr/sbin/tenured"));
        let mut args: Vec<std::ffi::OsString> = Vec::new();
        let mut it = std::env::args_os().skip(1);
        while let Some(a) = it.next() {
            if a == "--takeover" {
                let _ = it.next();
                continue;
            }
            args.push(a);
        }
        let mut server = Server {
            metrics,
            scrape_rx,
            upgrade: None,
            rejoins: std::collections::BTreeMap::new(),
            exe,
            args,
            state_path,
            state_written: None,
            state_journal: handover::StateJournal::new(),
            state_file: None,
            holder_ticks: HashMap::new(),
            boot_id,
            own_ticks: handover::pid_start_ticks(me).unwrap_or(0),
            adopted: None,
            capture_dir: std::env::var_os("TENURE_CAPTURE_DIR").map(PathBuf::from),
            started: clock.now(),
            cfg,
            clock,
            host,
            backend_name: choice.name,
            fallback_reason: choice.fallback_reason,
            listener,
            socket_path,
            sanlock_listener,
            inq_waiters: Vec::new(),
            shutdown_waiters: Vec::new(),
            conns: Vec::new(),
            next_serial: 0,
            event_fds: HashMap::new(),
            front_ops: HashMap::new(),
            probing: HashMap::new(),
            probe_tx,
            probe_rx,
            job_tx,
            job_rx,
            jobs_running: 0,
            wake,
            signals,
            watched: HashMap::new(),
        };
        if let Some(st) = crashed {
            server.adopt_inherited(&st)?;
        }
        if let Some(i) = inherited {
            server.adopt_handed_over(i.doc, fds.collect())?;
        } else {
            server.persist();
        }
        Ok(server)
    }

    /// The connections, event fds and state the old tenured handed over (crate::upgrade).
    fn adopt_handed_over(
        &mut self,
        doc: crate::upgrade::Handover,
        fds: Vec<OwnedFd>,
    ) -> Result<(), ServerError> {
        let bad = |e: String| ServerError::Config(format!("taking over: {e}"));
        let need = doc.conns.len() + doc.event_fds.iter().map(|(_, n)| n).sum::<usize>();
        if fds.len() != need {
            return Err(bad(format!(
                "{} fds for {need} connections and event fds",
                fds.len()
            )));
        }
        if !doc.host.in_flight.is_empty() || !doc.host.lost.is_empty() {
            return Err(bad(
                "the old tenured handed over with operations in flight or lockspaces lost".into(),
            ));
        }
        let mut fds = fds.into_iter();
        let mut serials = HashMap::new();
        for c in &doc.conns {
            // Counted above.
            let stream = UnixStream::from(fds.next().expect("counted"));
            stream
                .set_nonblocking(true)
                .map_err(|e| bad(format!("connection {}: {e}", c.serial)))?;
            let hex = |h: &str| {
                crate::host::unhex_any(h).map_err(|e| bad(format!("connection {}: {e}", c.serial)))
            };
            let proto = match c.proto.as_str() {
                "native" => Proto::Native,
                "sanlock" => Proto::Sanlock(sanlock::SanlockConn {
                    registered: c.registered,
                    ..sanlock::SanlockConn::default()
                }),
                other => return Err(bad(format!("connection {}: protocol {other:?}", c.serial))),
            };
            let idx = self.conns.len();
            if idx >= CLIENTS_MAX {
                return Err(bad(format!("more than {CLIENTS_MAX} connections")));
            }
            self.conns.push(Some(Conn {
                serial: c.serial,
                stream,
                hello: c.hello,
                inbuf: hex(&c.inbuf_hex)?,
                outbuf: hex(&c.outbuf_hex)?,
                busy: doc.requester == Some(c.serial),
                closing: c.closing,
                deferred: None,
                proto,
                op: None,
            }));
            let k = ClientKey {
                idx,
                serial: c.serial,
            };
            if let Some(ci) = &c.client {
                self.host.client_connected(
                    k,
                    ClientInfo {
                        pid: ci.pid,
                        uid: ci.uid,
                        name: ci.name.clone(),
                        kill_path: ci.kill_path.clone(),
                        restrict: ci.restrict,
                    },
                );
            }
            serials.insert(c.serial, k);
            self.next_serial = self.next_serial.max(c.serial);
        }
        for (space, n) in &doc.event_fds {
            let v = self.event_fds.entry(space.clone()).or_default();
            for _ in 0..*n {
                v.push(UnixStream::from(fds.next().expect("counted")));
            }
        }
        // The old process's state file: this one writes its own once it serves.
        self.open_state_devices(&doc.host);
        let now = self.clock.now();
        let alive = |pid: i32, ticks: u64| {
            handover::pid_start_ticks(pid).is_some_and(|t| ticks == 0 || t == ticks)
        };
        let report = self
            .host
            .adopt(now, &doc.host, &alive, &|serial| {
                serials.get(&serial).copied()
            })
            .map_err(|e| bad(e.to_string()))?;
        tracing::info!(
            lockspaces = report.spaces.len(),
            leases = report.leases,
            connections = doc.conns.len(),
            "state of the old tenured adopted"
        );
        self.adopted = doc.adopted;
        self.drain();
        Ok(())
    }

    /// Opens the devices of the areas a predecessor's state names, here and now (start-up:
    /// nothing else runs yet), each device within io_timeout: the first area of each device
    /// is read (its geometry checked against the device), the others are taken with the
    /// geometry the state recorded for them.
    fn open_state_devices(&mut self, st: &handover::HostState) {
        let limit = Duration::from_secs(self.cfg.io_timeout_s.max(1));
        let areas = st.areas();
        let mut by_path: Vec<(PathBuf, Vec<(u64, Geometry)>)> = Vec::new();
        for (p, o, g) in areas {
            match by_path.last_mut() {
                Some((lp, v)) if *lp == p => v.push((o, g)),
                _ => by_path.push((p, vec![(o, g)])),
            }
        }
        // One probe thread per device, all at once.
        let mut waiting = Vec::new();
        for (path, list) in &by_path {
            let key = (path.clone(), list[0].0);
            if self.host.area(&key).is_some() {
                continue;
            }
            let need_device = !self.host.has_disk(path);
            let (tx, rx) = channel();
            let k2 = key.clone();
            let spawned = std::thread::Builder::new()
                .name("tenured-probe".into())
                .spawn(move || {
                    let _ = tx.send(probe(k2, need_device));
                });
            if spawned.is_ok() {
                waiting.push((key, rx));
            }
        }
        let deadline = std::time::Instant::now() + limit;
        for (key, rx) in waiting {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(p) => {
                    if let Err(e) = self.host.probe_done(p.key, p.device, p.geometry) {
                        tracing::warn!(path = %key.0.display(), offset = key.1, error = %e, "a lease area of the predecessor's state cannot be read");
                    }
                }
                Err(_) => {
                    tracing::warn!(path = %key.0.display(), "a device of the predecessor's state did not answer within io_timeout");
                }
            }
        }
        for (path, list) in by_path {
            if let Some(disk) = self.host.disk_of(&path) {
                self.host.add_known_disk(path, disk, &list[1..]);
            }
        }
    }

    /// Goes on from a dead predecessor's state (crate::host::handover, docs/operations.md
    /// "Restart after a crash"): opens the devices it names, then adopts. A refusal is logged
    /// and this process starts afresh (the predecessor's marker keeps the watchdog from being
    /// fed: the reset it stands for happens). A failure after supervision took over is an
    /// error: tenured does not serve half an adoption.
    fn adopt_inherited(&mut self, st: &handover::HostState) -> Result<(), ServerError> {
        self.open_state_devices(st);
        let now = self.clock.now();
        let alive = |pid: i32, ticks: u64| {
            handover::pid_start_ticks(pid).is_some_and(|t| ticks == 0 || t == ticks)
        };
        match self.host.adopt(now, st, &alive, &|_| None) {
            Ok(report) => {
                tracing::warn!(
                    predecessor = st.pid,
                    lockspaces = report.spaces.len(),
                    leases = report.leases,
                    released = report.released,
                    dropped = ?report.dropped_spaces,
                    "adopted the state of the tenured that died (pid {}): lockspaces go on in the same generation, leases stay with their holders",
                    st.pid
                );
                self.adopted = Some(json!({
                    "predecessor_pid": st.pid,
                    "at_unix_ms": unix_ms(),
                    "lockspaces": report.spaces,
                    "leases": report.leases,
                    "released_dead_holders": report.released,
                    "dropped_lockspaces": report.dropped_spaces,
                }));
                self.drain();
                Ok(())
            }
            Err(e) if self.host.spaces().is_empty() => {
                tracing::error!(predecessor = st.pid, error = %e, "the state of the tenured that died is not adopted: starting afresh (a reset it left pending stays pending)");
                let _ = std::fs::remove_file(&self.state_path);
                Ok(())
            }
            Err(e) => Err(ServerError::Config(format!(
                "adopting the state of pid {} failed after supervision took over: {e}; not serving (the watchdog decides)",
                st.pid
            ))),
        }
    }

    /// A lockspace went without a leave: if the configuration names it, it is joined again
    /// after a wait that doubles with each failure (2T first, at most REJOIN_BACKOFF_MAX).
    /// Lockspaces added by clients are left to them, as with sanlock.
    fn schedule_rejoin(&mut self, name: &str, why: String) {
        if self.host.is_stopping() || !self.cfg.lockspaces.iter().any(|l| l.name == name) {
            return;
        }
        let now = self.clock.now();
        let first = Duration::from_secs(2 * self.cfg.io_timeout_s.max(1));
        let r = self.rejoins.entry(name.to_owned()).or_insert(Rejoin {
            due: None,
            backoff: first / 2,
            attempts: 0,
            reason: String::new(),
        });
        r.backoff = (r.backoff * 2).min(REJOIN_BACKOFF_MAX);
        r.due = Some(now.saturating_add(r.backoff));
        r.reason = why;
        tracing::warn!(lockspace = %name, in_s = r.backoff.as_secs(), reason = %r.reason, "configured lockspace gone: joining it again");
    }

    /// Starts the rejoins that are due, and ends those whose join succeeded.
    fn rejoin_due(&mut self) {
        let now = self.clock.now();
        let names: Vec<String> = self.rejoins.keys().cloned().collect();
        for name in names {
            let joined = self.host.space_index(&name).is_some_and(|i| {
                matches!(
                    self.host.space_state(&self.host.spaces()[i]),
                    Some(LockspaceState::Joined { .. })
                )
            });
            let Some(r) = self.rejoins.get_mut(&name) else {
                continue;
            };
            if joined {
                tracing::warn!(lockspace = %name, attempts = r.attempts, "configured lockspace joined again");
                self.rejoins.remove(&name);
                continue;
            }
            if r.due.is_none_or(|d| d > now) || self.host.space_index(&name).is_some() {
                continue;
            }
            let Some(l) = self.cfg.lockspaces.iter().find(|l| l.name == name).cloned() else {
                self.rejoins.remove(&name);
                continue;
            };
            let spec = match (Name::new(&l.name), l.offset.bytes()) {
                (Ok(n), Ok(offset)) => tenure_format::LockspaceSpec {
                    name: n,
                    host_id: l.host_id,
                    disk: tenure_format::DiskLocation {
                        path: l.path.display().to_string(),
                        offset,
                    },
                },
                _ => {
                    self.rejoins.remove(&name);
                    continue;
                }
            };
            let key: ProbeKey = (l.path.clone(), spec.disk.offset);
            match self.host.area(&key) {
                Some(Ok(_)) => {}
                known => {
                    // Probed (again) first, on a probe thread: a dead device must not stall
                    // the reactor.
                    r.due = Some(now.saturating_add(Duration::from_secs(1)));
                    if known.is_some() {
                        self.host.forget_failed_probes();
                    }
                    self.start_probes(&[key]);
                    continue;
                }
            }
            r.attempts += 1;
            r.due = None;
            self.metrics
                .rejoin_attempts
                .get_or_create(&crate::metrics::SpaceLabels {
                    lockspace: name.clone(),
                })
                .inc();
            let attempts = r.attempts;
            tracing::info!(lockspace = %name, attempt = attempts, "rejoining configured lockspace");
            let reply = self.host.lockspace_add_configured(now, &spec);
            self.drain();
            if let Reply::Error(e) = reply {
                self.schedule_rejoin(&name, e.message);
            }
        }
    }

    /// Nothing is in flight that a hand-over would cut (crate::upgrade), or what is.
    fn quiescent(&self) -> Result<(), String> {
        self.host.quiescent()?;
        let requester = self.upgrade.as_ref().and_then(|u| u.requester);
        if !self.probing.is_empty() {
            return Err(format!("{} device probes running", self.probing.len()));
        }
        if self.jobs_running > 0 {
            return Err(format!("{} direct I/O jobs running", self.jobs_running));
        }
        if !self.front_ops.is_empty() {
            return Err("a resource index operation runs".into());
        }
        if !self.inq_waiters.is_empty() || !self.shutdown_waiters.is_empty() {
            return Err("clients wait for a lockspace or for shutdown".into());
        }
        for (i, c) in self.conns.iter().enumerate() {
            let Some(c) = c else { continue };
            let k = ClientKey {
                idx: i,
                serial: c.serial,
            };
            if (c.busy && Some(k) != requester) || c.deferred.is_some() {
                return Err(format!(
                    "a request of connection {} is being answered",
                    c.serial
                ));
            }
        }
        Ok(())
    }

    /// The upgrade asked for: handed over once nothing is in flight (then this process
    /// exits), or given up after crate::upgrade::QUIESCE_MAX with the reason.
    fn try_upgrade(&mut self) {
        let Some(u) = &self.upgrade else { return };
        let timed_out = u.asked.elapsed() >= crate::upgrade::QUIESCE_MAX;
        let soon = self.host.renews_soon();
        let quiet = match &soon {
            // Serving on until the renewal is done.
            Some(_) if !timed_out => return,
            Some(name) => Err(format!("lockspace {name} did not renew")),
            None => {
                if let Some(u) = self.upgrade.as_mut() {
                    u.intake_stopped = true;
                }
                self.quiescent()
            }
        };
        let Some(u) = &self.upgrade else { return };
        let outcome = match quiet {
            Ok(()) => self.hand_over(),
            Err(why) if u.asked.elapsed() >= crate::upgrade::QUIESCE_MAX => Err(format!(
                "not upgraded: after {} s something is still in flight ({why}); try again",
                crate::upgrade::QUIESCE_MAX.as_secs()
            )),
            Err(_) => return,
        };
        // hand_over returns only when it failed.
        let message = match outcome {
            Ok(()) => return,
            Err(m) => m,
        };
        tracing::error!(error = %message, "upgrade failed: this tenured goes on serving");
        if let Some(u) = self.upgrade.take() {
            if let Some(k) = u.requester {
                self.reply(k, err(ErrorCode::Failed, message));
            }
        }
    }

    /// Hands everything to a new process and exits once it confirmed; returns the reason
    /// when it did not (this process goes on serving).
    fn hand_over(&mut self) -> Result<(), String> {
        let Some(u) = &self.upgrade else {
            return Err("internal: no upgrade asked for".into());
        };
        let (binary, requester, asked_at) = (u.binary.clone(), u.requester, u.asked_at);
        let wd_fd = self.host.freeze_supervision()?;
        let r = self.hand_over_frozen(&binary, requester, asked_at, wd_fd);
        // Only a failure comes back.
        self.host.thaw_supervision();
        r
    }

    fn hand_over_frozen(
        &mut self,
        binary: &Path,
        requester: Option<ClientKey>,
        asked_at: Time,
        wd_fd: Option<OwnedFd>,
    ) -> Result<(), String> {
        let now = self.clock.now();
        let me = std::process::id() as i32;
        let ticks = &mut self.holder_ticks;
        let host = self
            .host
            .state(now, &self.boot_id, me, self.own_ticks, &mut |p| {
                *ticks
                    .entry(p)
                    .or_insert_with(|| handover::pid_start_ticks(p).unwrap_or(0))
            });
        let dup = |fd: BorrowedFd<'_>, what: &str| {
            fd.try_clone_to_owned()
                .map_err(|e| format!("duplicating {what}: {e}"))
        };
        let mut fds: Vec<OwnedFd> = vec![dup(self.listener.as_fd(), "the socket")?];
        if let Some((l, _)) = &self.sanlock_listener {
            fds.push(dup(l.as_fd(), "the sanlock socket")?);
        }
        let watchdog_fd = wd_fd.is_some();
        fds.extend(wd_fd);
        let mut conns = Vec::new();
        for (i, c) in self.conns.iter().enumerate() {
            let Some(c) = c else { continue };
            let k = ClientKey {
                idx: i,
                serial: c.serial,
            };
            fds.push(dup(c.stream.as_fd(), "a connection")?);
            let info = self
                .host
                .client(k)
                .map(|ci| crate::upgrade::ClientHandover {
                    pid: ci.pid,
                    uid: ci.uid,
                    name: ci.name.clone(),
                    kill_path: ci.kill_path.clone(),
                    restrict: ci.restrict,
                });
            let (proto, registered) = match &c.proto {
                Proto::Native => ("native", false),
                Proto::Sanlock(sc) => ("sanlock", sc.registered),
            };
            conns.push(crate::upgrade::ConnHandover {
                serial: c.serial,
                proto: proto.into(),
                hello: c.hello,
                registered,
                closing: c.closing,
                inbuf_hex: crate::host::hex(&c.inbuf),
                outbuf_hex: crate::host::hex(&c.outbuf),
                client: info,
            });
        }
        let mut event_fds = Vec::new();
        for (space, v) in &self.event_fds {
            for s in v {
                fds.push(dup(s.as_fd(), "an event fd")?);
            }
            event_fds.push((space.clone(), v.len()));
        }
        let doc = crate::upgrade::Handover {
            format: crate::upgrade::HANDOVER_FORMAT.into(),
            version: crate::upgrade::HANDOVER_VERSION,
            from_version: env!("CARGO_PKG_VERSION").into(),
            host,
            sanlock_listener: self.sanlock_listener.is_some(),
            watchdog_fd,
            conns,
            event_fds,
            requester: requester.map(|k| k.serial),
            asked_at_ns: asked_at.as_nanos(),
            adopted: self.adopted.clone(),
        };
        let sock_path = self.cfg.run_dir.join(format!("tenured-handover-{me}.sock"));
        let _ = std::fs::remove_file(&sock_path);
        let l = std::os::unix::net::UnixListener::bind(&sock_path)
            .map_err(|e| format!("hand-over socket {}: {e}", sock_path.display()))?;
        let _ = std::fs::set_permissions(&sock_path, std::fs::Permissions::from_mode(0o600));
        let r = self.hand_over_through(&l, &sock_path, binary, &doc, &fds);
        let _ = std::fs::remove_file(&sock_path);
        r
    }

    fn hand_over_through(
        &mut self,
        l: &std::os::unix::net::UnixListener,
        sock_path: &Path,
        binary: &Path,
        doc: &crate::upgrade::Handover,
        fds: &[OwnedFd],
    ) -> Result<(), String> {
        let deadline = std::time::Instant::now() + crate::upgrade::CONFIRM_MAX;
        let mut child = std::process::Command::new(binary)
            .args(&self.args)
            .arg("--takeover")
            .arg(sock_path)
            .stdin(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", binary.display()))?;
        let pid = child.id();
        tracing::info!(pid, binary = %binary.display(), "new tenured started: handing over");
        let kill = |child: &mut std::process::Child| {
            let _ = child.kill();
            let _ = child.wait();
        };
        l.set_nonblocking(true).map_err(|e| e.to_string())?;
        let mut chan = loop {
            match l.accept() {
                Ok((s, _)) => {
                    let peer = getsockopt(&s, PeerCredentials)
                        .map(|c| c.pid())
                        .unwrap_or(0);
                    if u32::try_from(peer).ok() == Some(pid) {
                        break s;
                    }
                    tracing::warn!(
                        peer,
                        "hand-over socket: a connection not from the new tenured, dropped"
                    );
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    kill(&mut child);
                    return Err(format!("hand-over socket: {e}"));
                }
            }
            if let Ok(Some(st)) = child.try_wait() {
                return Err(format!(
                    "the new tenured ({}) exited before taking over: {st}",
                    binary.display()
                ));
            }
            if std::time::Instant::now() >= deadline {
                kill(&mut child);
                return Err(format!(
                    "the new tenured did not connect within {} s",
                    crate::upgrade::CONFIRM_MAX.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let sent = chan
            .set_nonblocking(false)
            .map_err(|e| e.to_string())
            .and_then(|()| crate::upgrade::send(&mut chan, doc, fds).map_err(|e| e.to_string()));
        // A new process that refuses the document answers why and closes before all of it
        // was sent: its answer is read either way.
        let answer_by = if sent.is_ok() {
            deadline
        } else {
            std::time::Instant::now() + Duration::from_secs(1)
        };
        let answer = crate::upgrade::read_line(&mut chan, answer_by).map_err(|e| e.to_string());
        let refused = match (&sent, &answer) {
            (Ok(()), Ok(line)) if line == "ready" => None,
            (_, Ok(line)) => Some(format!(
                "the new tenured refused the hand-over: {}",
                line.strip_prefix("error: ").unwrap_or(line)
            )),
            (Err(e), Err(_)) | (Ok(()), Err(e)) => {
                Some(format!("hand-over to the new tenured: {e}"))
            }
        };
        if let Some(why) = refused {
            kill(&mut child);
            return Err(why);
        }
        if let Err(e) = chan.write_all(b"go\n") {
            kill(&mut child);
            return Err(format!("telling the new tenured to go: {e}"));
        }
        crate::upgrade::notify_main_pid(pid);
        tracing::warn!(
            new_pid = pid,
            "handed over to the new tenured: exiting (nothing is released)"
        );
        // Nothing is closed or released: the new process holds the same sockets and watchdog.
        std::process::exit(0);
    }

    /// Brings the state file up to date when the host's state moved since it was last
    /// written (before any reply goes out, so a grant is on record before its holder hears
    /// of it): records of what changed are appended, and now and then the whole state is
    /// written aside and renamed over it (crate::host::journal). When it cannot be written
    /// it is removed: a stale state must never be adopted.
    fn persist(&mut self) {
        let epoch = self.host.state_epoch();
        if self.state_written == Some(epoch) {
            return;
        }
        let now = self.clock.now();
        let me = std::process::id() as i32;
        let ticks = &mut self.holder_ticks;
        let write = self.host.state_write(
            now,
            &self.boot_id,
            me,
            self.own_ticks,
            &mut |p| {
                *ticks
                    .entry(p)
                    .or_insert_with(|| handover::pid_start_ticks(p).unwrap_or(0))
            },
            &mut self.state_journal,
        );
        if self.holder_ticks.len() > 2 * self.host.leases().len() + 64 {
            let keep: std::collections::HashSet<i32> = self.host.leases().map(|l| l.pid).collect();
            self.holder_ticks.retain(|p, _| keep.contains(p));
        }
        let written = match (write, self.state_file.as_mut()) {
            (handover::StateWrite::Append(bytes), Some(f)) => f.write_all(&bytes),
            (handover::StateWrite::Append(_), None) => Err(std::io::Error::other(
                "the state file is not open (a bug: appending before a whole write)",
            )),
            (handover::StateWrite::Whole(bytes), _) => {
                self.state_file = None;
                let tmp = self.state_path.with_extension("json.tmp");
                std::fs::File::create(&tmp)
                    .and_then(|mut f| {
                        f.write_all(&bytes)?;
                        Ok(f)
                    })
                    .and_then(|f| {
                        std::fs::rename(&tmp, &self.state_path)?;
                        self.state_file = Some(f);
                        Ok(())
                    })
            }
        };
        match written {
            Ok(()) => self.state_written = Some(epoch),
            Err(e) => {
                self.state_file = None;
                self.state_journal.reset();
                let removed = std::fs::remove_file(&self.state_path);
                if self.state_written.is_some() || removed.is_ok() {
                    tracing::error!(path = %self.state_path.display(), error = %e, "cannot write the state file: removed it (a crash now resets this host, as without adoption)");
                }
                // Tried again (whole) at the next change.
                self.state_written = None;
            }
        }
    }

    /// The client socket.
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// The I/O backend in use.
    pub fn backend_name(&self) -> &'static str {
        self.backend_name
    }

    /// Joins the configured lockspaces and serves until SIGTERM/SIGINT finds no lease held.
    pub fn run(mut self) -> Result<(), ServerError> {
        for l in self.cfg.lockspaces.clone() {
            let spec = tenure_format::LockspaceSpec {
                name: Name::new(&l.name).map_err(|e| ServerError::Config(e.to_string()))?,
                host_id: l.host_id,
                disk: tenure_format::DiskLocation {
                    path: l.path.display().to_string(),
                    offset: l
                        .offset
                        .bytes()
                        .map_err(|e| ServerError::Config(e.to_string()))?,
                },
            };
            if self.host.space_index(&spec.name.escaped()).is_some() {
                // Adopted from the predecessor's state.
                continue;
            }
            // Configured lockspaces join in the background; failures are logged and shown
            // by `status`.
            if let Err(e) = self.add_configured_lockspace(spec) {
                tracing::error!(lockspace = %l.name, error = %e, "cannot join configured lockspace");
            }
        }
        tracing::info!(socket = %self.socket_path.display(), io_backend = self.backend_name, "tenured serving");
        loop {
            let now = self.clock.now();
            if let Err(e) = self.host.step(now) {
                // The engine itself failed (not one I/O): nothing can be renewed any more;
                // the supervisor's deadlines and the watchdog take it from here.
                tracing::error!(error = %e, "I/O engine failed");
                return Err(ServerError::Engine(e.to_string()));
            }
            self.drain();
            self.persist();
            if !self.rejoins.is_empty() {
                self.rejoin_due();
            }
            if self.upgrade.is_some() {
                self.try_upgrade();
            }
            if !self.inq_waiters.is_empty() {
                self.sanlock_inq_waiters();
            }
            if self.host.is_stopping() && self.host.ready_to_exit() {
                break;
            }
            self.wait_and_serve()?;
        }
        tracing::info!("all lockspaces left: exiting");
        for (k, h) in std::mem::take(&mut self.shutdown_waiters) {
            self.sanlock_shutdown_reply(k, h);
        }
        let _ = std::fs::remove_file(&self.socket_path);
        // Nothing is held: nothing to adopt.
        let _ = std::fs::remove_file(&self.state_path);
        Ok(())
    }

    /// Start-up: adds a configured lockspace, probing its area here (nothing else runs yet).
    fn add_configured_lockspace(
        &mut self,
        spec: tenure_format::LockspaceSpec,
    ) -> Result<(), String> {
        let key: ProbeKey = (PathBuf::from(&spec.disk.path), spec.disk.offset);
        if self.host.area(&key).is_none() {
            let need_device = !self.host.has_disk(&key.0);
            let p = probe(key, need_device);
            self.host
                .probe_done(p.key, p.device, p.geometry)
                .map_err(|e| format!("cannot read the lease area: {e}"))?;
        }
        let now = self.clock.now();
        let r = self.host.lockspace_add_configured(now, &spec);
        self.drain();
        match r {
            Reply::Error(e) => Err(e.message),
            Reply::Done(_) => Ok(()),
        }
    }

    /// Carries out what the host decided.
    fn drain(&mut self) {
        while let Some(o) = self.host.poll_output() {
            self.carry_out(o);
        }
    }

    fn carry_out(&mut self, o: Output) {
        match o {
            Output::Reply(k, r) => self.reply(k, r),
            Output::Probe(keys) => self.start_probes(&keys),
            Output::WatchPid(p) => {
                if let std::collections::hash_map::Entry::Vacant(v) = self.watched.entry(p) {
                    match rustix::process::Pid::from_raw(p).map(|pp| {
                        rustix::process::pidfd_open(pp, rustix::process::PidfdFlags::empty())
                    }) {
                        Some(Ok(fd)) => {
                            v.insert(fd);
                        }
                        // It exited between its registration and now: its leases go at once
                        // (not watched, they would stay its until the lockspace ends).
                        Some(Err(e)) => {
                            tracing::info!(pid = p, error = %e, "holder gone before it could be watched: releasing its leases");
                            let now = self.clock.now();
                            self.host.pid_exited(now, p);
                        }
                        None => tracing::error!(pid = p, "not a pid: its leases cannot be watched"),
                    }
                }
            }
            Output::Events {
                space,
                our_host_id,
                events,
            } => self.deliver_events(&space, our_host_id, &events),
            Output::ReadRequests(records) => {
                for r in records {
                    // Examinations are answered to nobody: a placeholder key.
                    let k = ClientKey {
                        idx: usize::MAX,
                        serial: 0,
                    };
                    self.spawn_job(k, move || JobReply::Examined {
                        record: read_request_record(&r.path, r.offset).ok(),
                        space: r.space,
                        resource: r.resource,
                    });
                }
            }
            Output::WriteRequest(w) => {
                let k = w.client;
                let started = self.spawn_job(k, move || JobReply::Requested {
                    result: write_request_record(&w.path, w.offset, w.lver, w.force_mode),
                    space: w.space,
                });
                if !started {
                    self.reply(k, err(ErrorCode::Full, "too many direct I/Os in progress"));
                }
            }
            Output::Signal { pid, signal } => {
                let sig = match signal {
                    crate::host::guard::KillSignal::Term => rustix::process::Signal::TERM,
                    crate::host::guard::KillSignal::Kill => rustix::process::Signal::KILL,
                };
                if let Some(p) = rustix::process::Pid::from_raw(pid) {
                    if let Ok(fd) =
                        rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty())
                    {
                        let _ = rustix::process::pidfd_send_signal(&fd, sig);
                    }
                }
            }
            Output::RunKillPath { pid, path, args } => {
                let spawned = std::process::Command::new(&path)
                    .args(&args)
                    .stdin(std::process::Stdio::null())
                    .spawn();
                if let Err(e) = spawned {
                    tracing::error!(pid, kill_path = %path, error = %e, "cannot run the kill path");
                }
            }
            Output::OpDone(id, outcome) => self.front_op_done(id, outcome),
            Output::SpaceGone { name, unplanned } => {
                self.event_fds.remove(&name);
                if let Some(why) = unplanned {
                    self.schedule_rejoin(&name, why);
                }
            }
        }
    }

    /// A client's command for the host.
    fn execute(&mut self, k: ClientKey, cmd: Command) -> Option<Reply> {
        let now = self.clock.now();
        let r = self.host.execute(now, k, cmd);
        self.drain();
        r
    }

    fn release_owner(&mut self, owner: Owner) {
        let now = self.clock.now();
        match owner {
            Owner::Conn(k) => self.host.client_closed(now, k),
            Owner::Pid(p) => self.host.pid_exited(now, p),
            Owner::Orphan => {}
        }
        self.drain();
    }

    fn space_index(&self, name: &str) -> Option<usize> {
        self.host.space_index(name)
    }

    fn wait_and_serve(&mut self) -> Result<(), ServerError> {
        let now = self.clock.now();
        let upgrading = self.upgrade.as_ref().is_some_and(|u| u.intake_stopped);
        let timeout = self
            .host
            .next_wakeup()
            .map_or(Duration::from_secs(1), |t| t.saturating_since(now))
            .min(if upgrading {
                Duration::from_millis(5)
            } else {
                Duration::from_secs(1)
            });
        // Sub-millisecond timers round up: never spin.
        let ms = u16::try_from(timeout.as_millis().max(1)).unwrap_or(1000);
        let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(8 + self.conns.len());
        fds.push(PollFd::new(self.signals.as_fd(), PollFlags::POLLIN));
        fds.push(PollFd::new(self.wake.as_fd(), PollFlags::POLLIN));
        // While an upgrade waits, no new client and no new request is taken in.
        let intake = if upgrading {
            PollFlags::empty()
        } else {
            PollFlags::POLLIN
        };
        fds.push(PollFd::new(self.listener.as_fd(), intake));
        let sl_at = fds.len();
        if let Some((l, _)) = &self.sanlock_listener {
            fds.push(PollFd::new(l.as_fd(), intake));
        }
        let notify: Option<BorrowedFd<'_>> = self.host.engine().notify_fd();
        let base = fds.len();
        if let Some(n) = notify {
            fds.push(PollFd::new(n, PollFlags::POLLIN));
        }
        let conn_base = fds.len();
        let mut conn_idx = Vec::with_capacity(self.conns.len());
        for (i, c) in self.conns.iter().enumerate() {
            if let Some(c) = c {
                let mut fl = PollFlags::empty();
                if !upgrading && !c.busy && !c.closing && c.inbuf.len() < proto::FRAME_MAX_BYTES + 4
                {
                    fl |= PollFlags::POLLIN;
                }
                if !c.outbuf.is_empty() {
                    fl |= PollFlags::POLLOUT;
                }
                fds.push(PollFd::new(c.stream.as_fd(), fl));
                conn_idx.push(i);
            }
        }
        let pid_base = fds.len();
        let pids: Vec<i32> = self.watched.keys().copied().collect();
        for p in &pids {
            fds.push(PollFd::new(self.watched[p].as_fd(), PollFlags::POLLIN));
        }
        let _ = base;
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => return Ok(()),
            Err(e) => {
                return Err(ServerError::Setup {
                    what: "poll".into(),
                    source: e.into(),
                })
            }
        }
        let ready = |f: &PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
        let sig = ready(&fds[0]);
        let woke = ready(&fds[1]);
        let accept = ready(&fds[2]);
        let accept_sanlock = self.sanlock_listener.is_some() && ready(&fds[sl_at]);
        let conn_ready: Vec<(usize, PollFlags)> = fds[conn_base..pid_base]
            .iter()
            .zip(&conn_idx)
            .filter_map(|(f, &i)| f.revents().filter(|r| !r.is_empty()).map(|r| (i, r)))
            .collect();
        let exited: Vec<i32> = fds[pid_base..]
            .iter()
            .zip(&pids)
            .filter(|(f, _)| ready(f))
            .map(|(_, p)| *p)
            .collect();
        drop(fds);
        if sig {
            while let Ok(Some(s)) = self.signals.read_signal() {
                self.on_signal(s.ssi_signo as i32);
            }
        }
        if woke {
            let _ = self.wake.read();
        }
        while let Ok(r) = self.probe_rx.try_recv() {
            self.probe_done(r);
        }
        while let Ok((k, r)) = self.job_rx.try_recv() {
            self.jobs_running -= 1;
            match r {
                JobReply::Native(r) => self.reply(k, r),
                JobReply::Sanlock(result, data2, payload) => {
                    self.sanlock_job_done(k, result, data2, &payload)
                }
                JobReply::Requested { space, result } => {
                    let now = self.clock.now();
                    self.host.request_written(now, k, &space, result);
                    self.drain();
                }
                JobReply::Examined {
                    space,
                    resource,
                    record,
                } => {
                    if let Some(rec) = record {
                        let now = self.clock.now();
                        self.host.request_record_read(now, &space, resource, &rec);
                        self.drain();
                    }
                }
                JobReply::RindexDone { space, held, reply } => {
                    self.rindex_done(k, &space, *held, reply)
                }
            }
        }
        while let Ok(tx) = self.scrape_rx.try_recv() {
            // The scraper may have given up waiting: nothing to do then.
            let _ = tx.try_send(self.metrics_text());
        }
        if accept {
            self.accept(false);
        }
        if accept_sanlock {
            self.accept(true);
        }
        for (i, flags) in conn_ready {
            if flags.intersects(PollFlags::POLLOUT) {
                self.flush(i);
            }
            if flags.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
                self.read_conn(i);
            }
        }
        for p in exited {
            self.watched.remove(&p);
            self.release_owner(Owner::Pid(p));
        }
        Ok(())
    }

    fn on_signal(&mut self, signo: i32) {
        if signo == libc::SIGHUP {
            // systemctl reload: an upgrade to the binary at this one's path.
            if self.upgrade.is_none() {
                tracing::info!(binary = %self.exe.display(), "SIGHUP: upgrading to the binary at this path");
                self.upgrade = Some(PendingUpgrade {
                    requester: None,
                    binary: self.exe.clone(),
                    asked: std::time::Instant::now(),
                    asked_at: self.clock.now(),
                    intake_stopped: false,
                });
            }
            return;
        }
        let now = self.clock.now();
        match self.host.stop_if_idle(now) {
            Ok(()) => tracing::info!(signal = signo, "stopping: leaving every lockspace"),
            Err(pids) => tracing::error!(
                leases = pids.len(),
                ?pids,
                "asked to stop while leases are held: refusing (exiting now would leave the \
                 watchdog to reset this host). Release the leases or stop their holders first \
                 (pid 0: an orphan; `tenure resource release --orphan LS`)."
            ),
        }
        self.drain();
    }

    // ---- connections ----

    fn accept(&mut self, sanlock: bool) {
        loop {
            let listener = match (&self.sanlock_listener, sanlock) {
                (Some((l, _)), true) => l,
                _ => &self.listener,
            };
            let (stream, _) = match listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    return;
                }
            };
            let cred = match getsockopt(&stream, PeerCredentials) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "SO_PEERCRED failed: connection dropped");
                    continue;
                }
            };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let slot = match self.conns.iter().position(Option::is_none) {
                Some(i) => i,
                None if self.conns.len() < CLIENTS_MAX => {
                    self.conns.push(None);
                    self.conns.len() - 1
                }
                None => {
                    // Full: tell it why, best effort, and drop it.
                    let mut s = stream;
                    if let Ok(b) = proto::encode_reply(&proto::Reply::from(err(
                        ErrorCode::Full,
                        format!("too many clients ({CLIENTS_MAX})"),
                    ))) {
                        let _ = s.write(&b);
                    }
                    continue;
                }
            };
            self.next_serial += 1;
            self.host.client_connected(
                ClientKey {
                    idx: slot,
                    serial: self.next_serial,
                },
                ClientInfo {
                    pid: cred.pid(),
                    uid: cred.uid(),
                    name: if sanlock {
                        cred.pid().to_string()
                    } else {
                        format!("pid {}", cred.pid())
                    },
                    kill_path: None,
                    restrict: 0,
                },
            );
            self.conns[slot] = Some(Conn {
                serial: self.next_serial,
                stream,
                // sanlock clients have no hello; the native layer treats them as greeted.
                hello: sanlock,
                inbuf: Vec::with_capacity(512),
                outbuf: Vec::new(),
                busy: false,
                closing: false,
                deferred: None,
                op: None,
                proto: if sanlock {
                    Proto::Sanlock(sanlock::SanlockConn::default())
                } else {
                    Proto::Native
                },
            });
        }
    }

    fn key(&self, idx: usize) -> Option<ClientKey> {
        self.conns
            .get(idx)
            .and_then(Option::as_ref)
            .map(|c| ClientKey {
                idx,
                serial: c.serial,
            })
    }

    fn conn(&mut self, k: ClientKey) -> Option<&mut Conn> {
        self.conns
            .get_mut(k.idx)
            .and_then(Option::as_mut)
            .filter(|c| c.serial == k.serial)
    }

    fn reply(&mut self, k: ClientKey, r: Reply) {
        self.persist();
        let Some(c) = self.conn(k) else {
            return;
        };
        if matches!(c.proto, Proto::Sanlock(_)) {
            return self.sanlock_reply(k, r);
        }
        c.busy = false;
        if let Some((kind, at)) = c.op.take() {
            let result = match &r {
                Reply::Done(_) => "ok".to_owned(),
                Reply::Error(e) => serde_json::to_value(e.code)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_else(|| "error".to_owned()),
            };
            self.metrics.answered("native", kind, result, at.elapsed());
        }
        let Some(c) = self.conn(k) else {
            return;
        };
        match proto::encode_reply(&proto::Reply::from(r)) {
            Ok(b) => c.outbuf.extend_from_slice(&b),
            Err(e) => {
                let fallback = err(ErrorCode::Failed, format!("reply too large: {e}"));
                if let Ok(b) = proto::encode_reply(&proto::Reply::from(fallback)) {
                    c.outbuf.extend_from_slice(&b);
                }
            }
        }
        self.flush(k.idx);
        // Frames that arrived while busy.
        self.process_frames(k.idx);
    }

    fn flush(&mut self, idx: usize) {
        let Some(c) = self.conns.get_mut(idx).and_then(Option::as_mut) else {
            return;
        };
        while !c.outbuf.is_empty() {
            match c.stream.write(&c.outbuf) {
                Ok(0) => break,
                Ok(n) => {
                    c.outbuf.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    c.outbuf.clear();
                    c.closing = true;
                    break;
                }
            }
        }
        let drop_it = (c.closing && c.outbuf.is_empty()) || c.outbuf.len() > OUTBUF_MAX;
        if drop_it {
            self.close(idx);
        }
    }

    fn read_conn(&mut self, idx: usize) {
        let mut buf = [0u8; 16 * 1024];
        let mut eof = false;
        {
            let capture = self.capture_dir.as_deref();
            let Some(c) = self.conns.get_mut(idx).and_then(Option::as_mut) else {
                return;
            };
            while c.inbuf.len() < proto::FRAME_MAX_BYTES + 4 {
                match c.stream.read(&mut buf) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => {
                        c.inbuf.extend_from_slice(&buf[..n]);
                        if let Some(dir) = capture {
                            let kind = match c.proto {
                                Proto::Native => "native_frame",
                                Proto::Sanlock(_) => "sanlock_wire",
                            };
                            capture_bytes(dir, kind, c.serial, &buf[..n]);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        eof = true;
                        break;
                    }
                }
            }
        }
        self.process_frames(idx);
        if eof {
            self.close(idx);
        }
    }

    fn process_frames(&mut self, idx: usize) {
        loop {
            let Some(k) = self.key(idx) else {
                return;
            };
            let Some(c) = self.conn(k) else {
                return;
            };
            if matches!(c.proto, Proto::Sanlock(_)) {
                return self.process_sanlock(k);
            }
            if c.busy || c.closing {
                return;
            }
            let len = match proto::split_frame(&c.inbuf) {
                Split::Incomplete => return,
                Split::TooLarge(n) => {
                    c.inbuf.clear();
                    c.closing = true;
                    let r = err(
                        ErrorCode::BadRequest,
                        format!(
                            "frame of {n} bytes exceeds the {}-byte limit; closing",
                            proto::FRAME_MAX_BYTES
                        ),
                    );
                    if let Ok(b) = proto::encode_reply(&proto::Reply::from(r)) {
                        c.outbuf.extend_from_slice(&b);
                    }
                    self.flush(idx);
                    return;
                }
                Split::Frame(n) => n,
            };
            let body: Vec<u8> = c.inbuf.drain(..4 + len).skip(4).collect();
            let req = match serde_json::from_slice::<Request>(&body) {
                Ok(r) => r,
                Err(e) => {
                    c.busy = true;
                    self.reply(
                        k,
                        err(ErrorCode::BadRequest, format!("malformed request: {e}")),
                    );
                    return;
                }
            };
            if let Some(c) = self.conn(k) {
                c.busy = true;
                c.op = Some((req.kind(), std::time::Instant::now()));
            }
            if let Some(r) = self.dispatch(k, req) {
                self.reply(k, r);
                return;
            }
        }
    }

    fn close(&mut self, idx: usize) {
        let Some(key) = self.key(idx) else {
            return;
        };
        self.conns[idx] = None;
        // Its leases go; pending acquires release what they win when they end.
        self.release_owner(Owner::Conn(key));
    }

    // ---- requests ----

    fn dispatch(&mut self, k: ClientKey, req: Request) -> Option<Reply> {
        let hello = self.conn(k).is_some_and(|c| c.hello);
        if !hello {
            return Some(match req {
                Request::Hello { version, name } if version == PROTOCOL_VERSION => {
                    let c = self.conn(k)?;
                    c.hello = true;
                    if let Some(n) = name {
                        if let Some(c) = self.host.client_mut(k) {
                            c.name = n.chars().take(64).collect();
                        }
                    }
                    Reply::Done(Done::View(json!({
                        "version": PROTOCOL_VERSION,
                        "daemon": env!("CARGO_PKG_VERSION"),
                        "host_name": self.host.host_name().escaped(),
                    })))
                }
                Request::Hello { version, .. } => {
                    if let Some(c) = self.conn(k) {
                        c.closing = true;
                    }
                    err(
                        ErrorCode::Version,
                        format!("protocol version {version} is not supported (this daemon speaks {PROTOCOL_VERSION})"),
                    )
                }
                _ => err(ErrorCode::Version, "the first request must be hello"),
            });
        }
        if self
            .host
            .client(k)
            .is_some_and(|c| c.restrict & crate::sanlock_wire::flags::RESTRICT_ALL != 0)
        {
            return Some(err(
                ErrorCode::Permission,
                "this connection restricted itself: no further requests",
            ));
        }
        let req = match req.decode() {
            Decoded::Host(cmd) => return self.execute(k, cmd),
            Decoded::Refused(e) => return Some(Reply::Error(e)),
            Decoded::Rindex(r) => return self.rindex(k, r),
            Decoded::Front(req) => req,
        };
        match req {
            Request::Hello { .. } => Some(err(ErrorCode::BadRequest, "hello was already said")),
            Request::Status {} => Some(Reply::Done(Done::View(self.status()))),
            Request::Metrics {} => Some(Reply::Done(Done::View(
                json!({"text": self.metrics_text()}),
            ))),
            Request::Upgrade { binary } => {
                if self.upgrade.is_some() {
                    return Some(err(ErrorCode::Busy, "an upgrade is in progress already"));
                }
                let binary = binary.map_or_else(|| self.exe.clone(), PathBuf::from);
                tracing::info!(binary = %binary.display(), "upgrade asked for: waiting for nothing to be in flight");
                self.upgrade = Some(PendingUpgrade {
                    requester: Some(k),
                    binary,
                    asked: std::time::Instant::now(),
                    asked_at: self.clock.now(),
                    intake_stopped: false,
                });
                None
            }
            Request::LockspaceList {} => Some(Reply::Done(Done::View(self.lockspace_list()))),
            Request::Hosts { lockspace } => Some(self.hosts(&lockspace)),
            Request::Owners { resource } => self.owners(k, &resource),
            other => Some(err(
                ErrorCode::Failed,
                format!("internal: {other:?} is not answered by the front end"),
            )),
        }
    }

    /// Starts probes for `keys` not known yet; true when all are known.
    fn ensure_probed(&mut self, keys: &[ProbeKey]) -> bool {
        let missing: Vec<ProbeKey> = keys
            .iter()
            .filter(|k| self.host.area(k).is_none())
            .cloned()
            .collect();
        self.start_probes(&missing);
        missing.is_empty()
    }

    /// Starts a probe thread for each key not being probed already (at most PROBES_MAX at
    /// once; a request still waiting asks again when the next probe ends).
    fn start_probes(&mut self, keys: &[ProbeKey]) {
        for key in keys {
            if self.probing.contains_key(key) || self.probing.len() >= PROBES_MAX {
                continue;
            }
            self.probing.insert(key.clone(), ());
            let need_device = !self.host.has_disk(&key.0);
            let (tx, key, wake) = (self.probe_tx.clone(), key.clone(), Arc::clone(&self.wake));
            let spawned = std::thread::Builder::new()
                .name("tenured-probe".into())
                .spawn(move || {
                    let r = probe(key, need_device);
                    let _ = tx.send(r);
                    let _ = wake.write(1);
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start probe thread");
            }
        }
    }

    fn probe_done(&mut self, r: ProbeResult) {
        self.probing.remove(&r.key);
        let _ = self.host.probe_done(r.key, r.device, r.geometry);
        // Re-dispatch every deferred request (each checks its own keys again).
        for idx in 0..self.conns.len() {
            let Some(k) = self.key(idx) else { continue };
            let Some(d) = self.conn(k).and_then(|c| c.deferred.take()) else {
                continue;
            };
            let reply = match d {
                Deferred::Rindex(req) => self.rindex(k, req),
            };
            if let Some(reply) = reply {
                self.reply(k, reply);
            }
        }
        // Failed probes are not cached: a later request tries again.
        self.host.forget_failed_probes();
    }

    fn lockspace_list(&self) -> serde_json::Value {
        let now = self.clock.now();
        let list: Vec<_> = self
            .host
            .spaces()
            .iter()
            .map(|s| {
                let state = self.host.engine().state(s.id);
                let (state_name, detail) = match &state {
                    Some(LockspaceState::Joining { phase, wait_until }) => (
                        "joining",
                        json!({"phase": format!("{phase:?}"), "wait_ms": wait_until.map(|t| t.saturating_since(now).as_millis() as u64)}),
                    ),
                    Some(LockspaceState::Joined { generation }) => ("joined", json!({"generation": generation})),
                    Some(LockspaceState::JoinFailed { error }) => ("join_failed", json!({"error": error.to_string()})),
                    Some(LockspaceState::Lost { error }) => ("lost", json!({"error": error.to_string()})),
                    Some(LockspaceState::Left) => ("left", json!({})),
                    Some(LockspaceState::Idle) | None => ("idle", json!({})),
                };
                let history = self.host.engine().renewal_history(s.id);
                let last: Vec<_> = history
                    .iter()
                    .rev()
                    .take(8)
                    .map(|r| {
                        json!({
                            "ago_ms": now.saturating_since(r.at).as_millis() as u64,
                            "read_ms": r.read_latency.map(|d| d.as_secs_f64() * 1e3),
                            "write_ms": r.write_latency.map(|d| d.as_secs_f64() * 1e3),
                            "error": r.error,
                        })
                    })
                    .collect();
                json!({
                    "name": s.name,
                    "host_id": s.spec.host_id,
                    "path": s.spec.disk.path,
                    "offset": s.spec.disk.offset,
                    "state": state_name,
                    "detail": detail,
                    "io_timeout_s": self.host.engine().config(s.id).map(|c| c.timeouts.io_timeout_s),
                    // The W assumed for the other hosts, and when one counts as dead (8T + W,
                    // with its own T; ours shown here).
                    "other_hosts_fire_timeout_s": self.host.engine().config(s.id).map(|c| c.timeouts.watchdog_fire_s),
                    "host_dead_after_s": self.host.engine().config(s.id).map(|c| c.timeouts.host_dead().as_secs()),
                    "renewal_deadline_in_ms": self.host.engine().renewal_deadline(s.id).map(|d| d.saturating_since(now).as_millis() as u64),
                    "leases": self.host.leases().filter(|l| l.space == s.name).count(),
                    "last_renewals": last,
                })
            })
            .collect();
        json!({"lockspaces": list})
    }

    /// The metrics exposition (crate::metrics), gauges as of now.
    fn metrics_text(&self) -> String {
        use crate::metrics::{Snapshot, SpaceSnapshot};
        let now = self.clock.now();
        let signed = |d: Time| {
            if d >= now {
                d.saturating_since(now).as_secs_f64()
            } else {
                -now.saturating_since(d).as_secs_f64()
            }
        };
        let spaces = self
            .host
            .spaces()
            .iter()
            .map(|s| {
                let engine = self.host.engine();
                let state = match engine.state(s.id) {
                    Some(LockspaceState::Joining { .. }) => "joining",
                    Some(LockspaceState::Joined { .. }) => "joined",
                    Some(LockspaceState::JoinFailed { .. }) => "join_failed",
                    Some(LockspaceState::Lost { .. }) => "lost",
                    Some(LockspaceState::Left) => "left",
                    Some(LockspaceState::Idle) | None => "idle",
                };
                let mut hosts = [
                    ("free", 0),
                    ("unknown", 0),
                    ("live", 0),
                    ("fail", 0),
                    ("dead", 0),
                ];
                if engine.hosts_checked(s.id) {
                    for (_, st) in engine.hosts(s.id, now) {
                        let i = match st {
                            HostStatus::Free => 0,
                            HostStatus::Unknown => 1,
                            HostStatus::Live => 2,
                            HostStatus::Fail => 3,
                            HostStatus::Dead => 4,
                        };
                        hosts[i].1 += 1;
                    }
                }
                let mut leases = (0, 0);
                let mut orphans = 0;
                for l in self
                    .host
                    .leases()
                    .filter(|l| l.space == s.name && l.joining.is_none())
                {
                    if l.owner == Owner::Orphan {
                        orphans += 1;
                    } else if l.held.acquired.shared {
                        leases.1 += 1;
                    } else {
                        leases.0 += 1;
                    }
                }
                let since_renewal_s = engine
                    .renewal_history(s.id)
                    .iter()
                    .rev()
                    .find(|r| r.error.is_none())
                    .map(|r| now.saturating_since(r.at).as_secs_f64());
                SpaceSnapshot {
                    name: s.name.clone(),
                    state,
                    headroom_s: engine.renewal_deadline(s.id).map(signed),
                    since_renewal_s,
                    hosts: if engine.hosts_checked(s.id) {
                        hosts.to_vec()
                    } else {
                        Vec::new()
                    },
                    leases,
                    orphans,
                }
            })
            .collect();
        let mut clients = (0, 0);
        for c in self.conns.iter().flatten() {
            match c.proto {
                Proto::Sanlock(_) => clients.1 += 1,
                _ => clients.0 += 1,
            }
        }
        let sup = self.host.supervision_status();
        let snap = Snapshot {
            uptime_s: now.saturating_since(self.started).as_secs_f64(),
            spaces,
            clients,
            io_in_flight: self.host.engine().io_in_flight() as i64,
            ops_in_flight: self.host.engine().ops_in_flight() as i64,
            watchdog_armed: sup["armed"].as_bool().unwrap_or(false),
            watchdog_fed_age_s: sup["last_fed_ms_ago"].as_u64().map(|ms| ms as f64 / 1e3),
            watchdog_withheld: sup["last_tick"]
                .as_str()
                .is_some_and(|t| t.starts_with("withheld")),
            watchdog_fire_timeout_s: sup["fire_timeout_s"].as_i64().unwrap_or(0),
        };
        self.metrics.render(&snap)
    }

    fn hosts(&self, name: &str) -> Reply {
        let Some(i) = self.space_index(name) else {
            return err(ErrorCode::NotFound, format!("no lockspace {name}"));
        };
        let now = self.clock.now();
        let hosts: Vec<_> = self
            .host
            .engine()
            .hosts(self.host.spaces()[i].id, now)
            .into_iter()
            .map(|(e, st)| {
                json!({
                    "host_id": e.host_id,
                    "name": e.owner_name.escaped(),
                    "generation": e.generation,
                    "timestamp": e.timestamp,
                    "io_timeout": e.io_timeout,
                    "status": format!("{st:?}").to_lowercase(),
                    "last_change_ms_ago": e.last_change.map(|t| now.saturating_since(t).as_millis() as u64),
                })
            })
            .collect();
        Reply::Done(Done::View(json!({"lockspace": name, "hosts": hosts})))
    }

    fn status(&self) -> serde_json::Value {
        let now = self.clock.now();
        let mut clients: Vec<_> = self.host.clients().collect();
        clients.sort_by_key(|(k, _)| k.idx);
        let clients: Vec<_> = clients
            .iter()
            .map(|(_, c)| json!({"pid": c.pid, "uid": c.uid, "name": c.name}))
            .collect();
        json!({
            "daemon": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "host_name": self.host.host_name().escaped(),
            "uptime_s": now.saturating_since(self.started).as_secs(),
            "io_backend": self.backend_name,
            "io_fallback_reason": self.fallback_reason,
            "io_timeout_s": self.cfg.io_timeout_s,
            "socket": self.socket_path,
            "clients": clients,
            "lockspaces": self.lockspace_list()["lockspaces"],
            "leases": self.host.leases().filter(|l| l.joining.is_none()).map(|l| serde_json::to_value(l.view()).unwrap_or_default()).collect::<Vec<_>>(),
            "operations_in_flight": self.host.engine().ops_in_flight(),
            // Local exclusion: what this host is doing with each resource now (an acquire of
            // it by another client is refused meanwhile: busy, or releasing).
            "resources_in_flight": self.host.in_flight().iter().map(|(k, op)| json!({
                "lockspace": k.space,
                "resource": k.name.escaped(),
                "operation": op,
            })).collect::<Vec<_>>(),
            "supervisor": self.host.supervision_status(),
            // Set when this process went on from the state of a tenured that died.
            "adopted": self.adopted,
            // Configured lockspaces being joined again after a loss.
            "rejoins": self.rejoins.iter().map(|(name, r)| json!({
                "lockspace": name,
                "attempts": r.attempts,
                "next_attempt_in_ms": r.due.map(|d| d.saturating_since(now).as_millis() as u64),
                "reason": r.reason,
            })).collect::<Vec<_>>(),
        })
    }

    fn owners(&mut self, k: ClientKey, resource: &str) -> Option<Reply> {
        let spec = match ResourceSpec::parse(resource) {
            Ok(s) => s,
            Err(e) => return Some(err(ErrorCode::BadRequest, format!("resource spec: {e}"))),
        };
        if self.jobs_running >= PROBES_MAX {
            return Some(err(ErrorCode::Full, "too many direct reads in progress"));
        }
        // Liveness of the hosts named, from our host table when we are in that lockspace.
        let now = self.clock.now();
        let table: Vec<(u64, u64, String)> = self
            .space_index(&spec.lockspace.escaped())
            .map(|i| {
                self.host
                    .engine()
                    .hosts(self.host.spaces()[i].id, now)
                    .into_iter()
                    .map(|(e, st)| (e.host_id, e.generation, format!("{st:?}").to_lowercase()))
                    .collect()
            })
            .unwrap_or_default();
        let (tx, wake) = (self.job_tx.clone(), Arc::clone(&self.wake));
        self.jobs_running += 1;
        let spawned = std::thread::Builder::new()
            .name("tenured-owners".into())
            .spawn(move || {
                let r = match tenure_core::direct::owners(&spec, BackendKind::Sync) {
                    Ok(reports) => {
                        let status = |h: u64, g: u64| {
                            table
                                .iter()
                                .find(|(id, gen, _)| *id == h && *gen == g)
                                .map_or("unknown here", |(_, _, s)| s.as_str())
                                .to_owned()
                        };
                        let disks: Vec<_> = reports
                            .iter()
                            .map(|r| {
                                let o = &r.owners;
                                json!({
                                    "path": r.path,
                                    "offset": r.offset,
                                    "lver": o.lver,
                                    "exclusive": o.exclusive.as_ref().map(|h| json!({"host_id": h.host_id, "generation": h.generation, "timestamp": h.timestamp, "status": status(h.host_id, h.generation)})),
                                    "shared": o.shared.iter().map(|h| json!({"host_id": h.host_id, "generation": h.generation, "status": status(h.host_id, h.generation)})).collect::<Vec<_>>(),
                                })
                            })
                            .collect();
                        Reply::Done(Done::View(json!({"resource": spec.name.escaped(), "disks": disks})))
                    }
                    Err(e) => err(ErrorCode::Io, e.to_string()),
                };
                let _ = tx.send((k, JobReply::Native(r)));
                let _ = wake.write(1);
            });
        if let Err(e) = spawned {
            self.jobs_running -= 1;
            return Some(err(
                ErrorCode::Failed,
                format!("cannot start a reader thread: {e}"),
            ));
        }
        None
    }

    /// Runs `f` (direct storage I/O that may block) on a helper thread; its reply comes back
    /// through the job channel. False when too many run already or no thread could start.
    fn spawn_job(&mut self, k: ClientKey, f: impl FnOnce() -> JobReply + Send + 'static) -> bool {
        if self.jobs_running >= PROBES_MAX {
            return false;
        }
        let (tx, wake) = (self.job_tx.clone(), Arc::clone(&self.wake));
        let spawned = std::thread::Builder::new()
            .name("tenured-job".into())
            .spawn(move || {
                let r = f();
                let _ = tx.send((k, r));
                let _ = wake.write(1);
            });
        if spawned.is_ok() {
            self.jobs_running += 1;
        }
        spawned.is_ok()
    }
}

/// Reads the request record (sector 1) of the lease area at `offset`.
fn read_request_record(
    path: &str,
    offset: u64,
) -> Result<tenure_format::paxos::RequestRecord, String> {
    let mut d = DirectDisk::open(Path::new(path), Access::Read, BackendKind::Sync)
        .map_err(|e| e.to_string())?;
    let leader = d
        .read(offset, 4096, LeaderRecord::decode)
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let ss = u64::from(leader.sector_size);
    d.read(
        offset + ss,
        ss as usize,
        tenure_format::paxos::RequestRecord::decode,
    )
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())
}

/// Writes a request record for the lease at `offset` (spec/SANLOCK-WIRE.md "REQUEST"): lver
/// given, or (None) the owner's lver + 1; a free lease is left alone. Returns the owner to
/// signal, or sanlock's result.
fn write_request_record(
    path: &str,
    offset: u64,
    lver: Option<u64>,
    force_mode: u32,
) -> Result<Option<u64>, i32> {
    use crate::sanlock_wire::rv;
    let mut d = DirectDisk::open(Path::new(path), Access::ReadWrite, BackendKind::Sync)
        .map_err(|_| rv::ENODEV)?;
    let leader = d
        .read(offset, 4096, LeaderRecord::decode)
        .map_err(|_| rv::SANLK_AIO_TIMEOUT)?
        .map_err(|_| rv::SANLK_LEADER_MAGIC)?;
    let Some((record, owner)) = crate::host::requests::request_for(&leader, lver, force_mode)?
    else {
        return Ok(None);
    };
    let ss = leader.sector_size as usize;
    let mut sector = vec![0u8; ss];
    record.encode_into(&mut sector);
    d.write(offset + ss as u64, &sector)
        .map_err(|_| rv::SANLK_AIO_TIMEOUT)?;
    Ok(owner)
}

/// Appends a connection's bytes to its capture file (at most 64 KiB per connection); a
/// failure to write is ignored (capturing is a test aid, never in the way of serving).
fn capture_bytes(dir: &Path, kind: &str, serial: u64, bytes: &[u8]) {
    use std::io::Write as _;
    let dir = dir.join(kind);
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    let path = dir.join(format!("{}-{serial}", std::process::id()));
    let len = std::fs::metadata(&path).map_or(0, |m| m.len());
    if len >= 64 * 1024 {
        return;
    }
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    {
        let room = (64 * 1024 - len) as usize;
        let _ = f.write_all(&bytes[..bytes.len().min(room)]);
    }
}

/// Who listens on the socket `s` is connected to, from its peer credentials: a real
/// sanlock daemon (on sanlock.sock), another tenured, or some other program.
fn socket_owner(s: &UnixStream) -> String {
    let Ok(cred) = nix::sys::socket::getsockopt(s, nix::sys::socket::sockopt::PeerCredentials)
    else {
        return "another program listens on it (its pid is unknown)".to_owned();
    };
    let pid = cred.pid();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().to_owned())
        .unwrap_or_default();
    match comm.as_str() {
        "tenured" => format!("another tenured is running (pid {pid})"),
        "sanlock" => format!(
            "the real sanlock daemon owns it (pid {pid}): stop sanlock (systemctl stop sanlock) \
             before starting tenured with --sanlock-compat, or give tenured another \
             --sanlock-run-dir"
        ),
        "" => format!("pid {pid} listens on it"),
        c => format!("{c} (pid {pid}) listens on it"),
    }
}

fn bind(path: &Path, group: Option<&str>, mode_alone: u32) -> Result<UnixListener, ServerError> {
    if let Ok(s) = UnixStream::connect(path) {
        return Err(ServerError::Config(format!(
            "{} is in use: {}",
            path.display(),
            socket_owner(&s)
        )));
    }
    // A stale socket of a daemon that died.
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path).map_err(setup(format!("binding {}", path.display())))?;
    l.set_nonblocking(true)
        .map_err(setup("nonblocking listener"))?;
    let mode = if group.is_some() { 0o660 } else { mode_alone };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(setup(format!("chmod {}", path.display())))?;
    if let Some(g) = group {
        let gid = nix::unistd::Group::from_name(g)
            .ok()
            .flatten()
            .ok_or_else(|| ServerError::Config(format!("socket_group {g:?} does not exist")))?
            .gid;
        nix::unistd::chown(path, None, Some(gid)).map_err(|e| ServerError::Setup {
            what: format!("chown {}", path.display()),
            source: e.into(),
        })?;
    }
    let _ = l.as_raw_fd();
    Ok(l)
}
