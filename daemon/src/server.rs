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
use tenure_core::delta::{DeltaConfig, DeltaEvent};
use tenure_core::dev::{Access, Device};
use tenure_core::direct::{BackendKind, DirectDisk};
use tenure_core::io::{open_backend, DiskId, EngineConfig};
use tenure_core::lockspace::{
    AcquireOptions, HeldResource, LockspaceId, LockspaceSet, LockspaceState, OpError, OpId,
    OpOutcome, ResourceTarget,
};
use tenure_core::paxos::PaxosError;
use tenure_core::timeouts::Timeouts;
use tenure_format::spec::escape_field;
use tenure_format::{Geometry, LeaderRecord, LockspaceSpec, Name, ResourceMode, ResourceSpec};
use tenure_watchdog::fence::RenewalNote;

use crate::config::Config;
use crate::host::admission::{Admit, InFlight, Refusal, ResourceKey};
use crate::host::registry::{ClientKey, Lease, Owner, Registry};
use crate::proto::{self, ErrorCode, ErrorReply, Reply, Request, Split, PROTOCOL_VERSION};
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

/// A request waiting for probes (device open, geometry) before it can run.
#[derive(Debug)]
enum Deferred {
    /// Re-dispatched as a native request.
    Native(Request),
    /// A sanlock acquire for a target connection.
    SanlockAcquire(Request, ClientKey),
}

/// Connections at once.
pub const CLIENTS_MAX: usize = 256;
/// Leases held at once.
pub const LEASES_MAX: usize = 8192;
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
    pid: i32,
    uid: u32,
    name: String,
    hello: bool,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    /// A request is in progress (reply comes later).
    busy: bool,
    /// Close once the output is flushed.
    closing: bool,
    kill_path: Option<(String, Vec<String>)>,
    /// A request waiting for probes to finish.
    deferred: Option<Deferred>,
    /// The protocol it speaks.
    proto: Proto,
    /// Restrictions it put on itself (sanlock's RESTRICT bits: ALL, no SIGKILL, no SIGTERM).
    restrict: u32,
}

#[derive(Debug)]
struct Space {
    name: String,
    id: LockspaceId,
    spec: LockspaceSpec,
    join_waiters: Vec<ClientKey>,
    leave_waiters: Vec<ClientKey>,
    lost: Option<String>,
    /// The supervisor cleared it (all holders dead); forgotten once no operation runs.
    cleared: bool,
    /// sanlock event fds registered for it (REG_EVENT); closed when it goes.
    event_fds: Vec<UnixStream>,
    /// Marked used (LockspaceConfig / SET_CONFIG).
    used: bool,
    /// Marked used while orphans exist.
    used_by_orphans: bool,
}

#[derive(Debug)]
enum Pending {
    Acquire {
        client: ClientKey,
        client_name: String,
        space: String,
        locations: Vec<(String, u64)>,
        owner: Owner,
        pid: i32,
        /// The resources run on disk (claimed in flight); the others joined shared holds.
        on_disk: Vec<ResourceKey>,
    },
    Release {
        client: Option<ClientKey>,
        leases: Vec<Lease>,
        /// Released by this host's other holders of a shared hold without disk I/O, reported
        /// with this release.
        local: Vec<Name>,
    },
    Convert {
        client: ClientKey,
        space: String,
        resource: Name,
    },
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

type ProbeKey = (PathBuf, u64);

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
        sanlock: bool,
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

#[derive(Debug, Clone, Copy)]
struct AreaInfo {
    geometry: Geometry,
}

/// The running daemon.
#[derive(Debug)]
pub struct Server {
    cfg: Config,
    host_name: Name,
    clock: MonotonicClock,
    set: LockspaceSet,
    backend_name: &'static str,
    fallback_reason: Option<String>,
    listener: UnixListener,
    socket_path: PathBuf,
    /// The sanlock-compatible socket, when enabled.
    sanlock_listener: Option<(UnixListener, PathBuf)>,
    /// INQ_LOCKSPACE with INQ_WAIT: (client, lockspace name).
    inq_waiters: Vec<(ClientKey, String)>,
    /// REM_LOCKSPACE waiting for killed holders: (client to answer, unless async; lockspace).
    rem_after_kill: Vec<(Option<ClientKey>, String)>,
    /// sanlock SHUTDOWN_WAIT callers answered when tenured exits.
    shutdown_waiters: Vec<(ClientKey, crate::sanlock_wire::Header)>,
    conns: Vec<Option<Conn>>,
    next_serial: u64,
    spaces: Vec<Space>,
    /// The leases of this host's clients, and local exclusion (crate::host::registry).
    reg: Registry,
    pending: HashMap<OpId, Pending>,
    disks: HashMap<PathBuf, DiskId>,
    areas: HashMap<ProbeKey, Result<AreaInfo, String>>,
    probing: HashMap<ProbeKey, ()>,
    probe_tx: Sender<ProbeResult>,
    probe_rx: Receiver<ProbeResult>,
    /// Replies computed on helper threads (direct reads that may block on storage).
    job_tx: Sender<(ClientKey, JobReply)>,
    job_rx: Receiver<(ClientKey, JobReply)>,
    jobs_running: usize,
    wake: Arc<EventFd>,
    signals: SignalFd,
    sup: Option<Supervisor>,
    /// Pids holding leases acquired on their behalf, watched for exit.
    watched: HashMap<i32, OwnedFd>,
    started: Time,
    stopping: bool,
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

/// The answer to a request refused by local exclusion (sanlock's codes: crate::host::admission).
fn refusal_reply(key: &ResourceKey, r: Refusal) -> Reply {
    let what = format!("{}:{}", key.space, key.name.escaped());
    match r {
        Refusal::Held => err(
            ErrorCode::Exists,
            format!("{what} is already held on this host"),
        ),
        Refusal::Busy => err(
            ErrorCode::Busy,
            format!("{what}: another operation of this host is working on it"),
        ),
        Refusal::Releasing => err(
            ErrorCode::Releasing,
            format!("{what} is being released on this host; try again"),
        ),
        Refusal::SharedHere => err(
            ErrorCode::Busy,
            format!(
                "{what} is held shared by other processes of this host: it cannot become exclusive"
            ),
        ),
    }
}

/// An operation's failure as the native protocol reports it: the code (sanlock's result is
/// derived from it), the holder's identity where there is one, and in `details.fault` who is
/// at fault (contention, storage, damaged, configuration, misuse, internal).
fn op_error_reply(resource: Name, e: &OpError) -> Reply {
    use tenure_core::paxos::Fault;
    let r = resource.escaped();
    let holder =
        |host_id: &u64, generation: &u64| json!({"host_id": host_id, "generation": generation});
    let (code, mut details) = match e {
        OpError::Paxos(PaxosError::OwnerAlive {
            host_id,
            generation,
        }) => (ErrorCode::OwnerAlive, holder(host_id, generation)),
        OpError::Paxos(PaxosError::OwnedRetry {
            host_id,
            generation,
        }) => (ErrorCode::OwnedRetry, holder(host_id, generation)),
        // Contention inside one ballot: the other host holds it now, as if we had found it
        // held.
        OpError::Paxos(PaxosError::AcquiredByOther { host_id }) => {
            (ErrorCode::OwnerAlive, json!({"host_id": host_id}))
        }
        OpError::Paxos(PaxosError::LverMismatch { .. }) => (ErrorCode::LverMismatch, json!({})),
        OpError::Paxos(PaxosError::SharedBusy {
            host_id,
            generation,
        }) => (ErrorCode::SharedBusy, holder(host_id, generation)),
        OpError::NotJoined => (ErrorCode::NotJoined, json!({})),
        OpError::LockspaceLost => (ErrorCode::LockspaceLost, json!({})),
        OpError::Full(_) => (ErrorCode::Full, json!({})),
        OpError::UnknownLockspace => (ErrorCode::NotFound, json!({})),
        // The rest by fault: no failure is reported as another kind (a stalled machine is
        // a bug, not damage on disk).
        other => (
            match other.fault() {
                Fault::Storage => ErrorCode::Io,
                Fault::Damaged => ErrorCode::Corrupt,
                Fault::Misuse => ErrorCode::BadRequest,
                Fault::Contention | Fault::Configuration | Fault::Internal => ErrorCode::Failed,
            },
            json!({}),
        ),
    };
    details["fault"] = json!(e.fault());
    let mut reply = ErrorReply::new(code, format!("{r}: {e}"));
    reply.details = Some(details);
    Reply::Error(reply)
}

fn probe(key: ProbeKey, need_device: bool) -> ProbeResult {
    let device =
        need_device.then(|| Device::open(&key.0, Access::ReadWrite).map_err(|e| e.to_string()));
    // A lease area's leader, or a resource index header (its geometry is what counts).
    let geometry = (|| {
        let mut d =
            DirectDisk::open(&key.0, Access::Read, BackendKind::Auto).map_err(|e| e.to_string())?;
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
        let engine = EngineConfig {
            ring_entries: 256,
            buffer_classes: vec![(4096, 512), (1 << 20, 64), (8 << 20, 8)],
            sync_workers: 4,
        };
        let (set_backend, choice) = open_backend(Vec::new(), &engine, backend)
            .map_err(|e| ServerError::Engine(e.to_string()))?;
        if let Some(r) = &choice.fallback_reason {
            tracing::warn!(reason = %r, "io_uring unavailable: using the pread/pwrite fallback");
        }
        std::fs::create_dir_all(&cfg.run_dir)
            .map_err(setup(format!("creating {}", cfg.run_dir.display())))?;
        std::fs::create_dir_all(&cfg.state_dir)
            .map_err(setup(format!("creating {}", cfg.state_dir.display())))?;
        let socket_path = cfg.socket_path();
        let listener = bind(&socket_path, cfg.socket_group.as_deref(), 0o600)?;
        let sanlock_listener = match cfg.sanlock_socket_dir() {
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
        let sup = Supervisor::start(
            SupervisorConfig {
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
        Ok(Server {
            started: clock.now(),
            cfg,
            host_name,
            clock,
            set: LockspaceSet::new(set_backend),
            backend_name: choice.name,
            fallback_reason: choice.fallback_reason,
            listener,
            socket_path,
            sanlock_listener,
            inq_waiters: Vec::new(),
            rem_after_kill: Vec::new(),
            shutdown_waiters: Vec::new(),
            conns: Vec::new(),
            next_serial: 0,
            spaces: Vec::new(),
            reg: Registry::new(no_exclusion),
            pending: HashMap::new(),
            disks: HashMap::new(),
            areas: HashMap::new(),
            probing: HashMap::new(),
            probe_tx,
            probe_rx,
            job_tx,
            job_rx,
            jobs_running: 0,
            wake,
            signals,
            sup: Some(sup),
            watched: HashMap::new(),
            stopping: false,
        })
    }

    /// The client socket.
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// The I/O backend in use.
    pub fn backend_name(&self) -> &'static str {
        self.backend_name
    }

    fn sup(&self) -> &Supervisor {
        // Present until run() returns.
        self.sup
            .as_ref()
            .expect("supervisor runs while the server runs")
    }

    /// Joins the configured lockspaces and serves until SIGTERM/SIGINT finds no lease held.
    pub fn run(mut self) -> Result<(), ServerError> {
        for l in self.cfg.lockspaces.clone() {
            let spec = format!(
                "{}:{}:{}:{}",
                escape_field(&l.name),
                l.host_id,
                escape_field(&l.path.display().to_string()),
                l.offset
                    .bytes()
                    .map_err(|e| ServerError::Config(e.to_string()))?
            );
            // Configured lockspaces join in the background; failures are logged and shown
            // by `status`.
            if let Some(Reply::Error(e)) = self.request_lockspace_add(None, &spec, false, None) {
                tracing::error!(lockspace = %l.name, error = %e.message, "cannot join configured lockspace");
            }
        }
        tracing::info!(socket = %self.socket_path.display(), io_backend = self.backend_name, "tenured serving");
        loop {
            let now = self.clock.now();
            if let Err(e) = self.set.step(now) {
                // The engine itself failed (not one I/O): nothing can be renewed any more;
                // the supervisor's deadlines and the watchdog take it from here.
                tracing::error!(error = %e, "I/O engine failed");
                return Err(ServerError::Engine(e.to_string()));
            }
            self.after_step(now);
            if self.stopping && self.ready_to_exit() {
                break;
            }
            self.wait_and_serve()?;
        }
        tracing::info!("all lockspaces left: exiting");
        for (k, h) in std::mem::take(&mut self.shutdown_waiters) {
            self.sanlock_shutdown_reply(k, h);
        }
        if let Some(sup) = self.sup.take() {
            sup.stop();
        }
        let _ = std::fs::remove_file(&self.socket_path);
        Ok(())
    }

    fn ready_to_exit(&self) -> bool {
        self.spaces.is_empty() && self.pending.is_empty()
    }

    fn after_step(&mut self, now: Time) {
        while let Some((id, outcome)) = self.set.take_op_result() {
            self.op_done(now, id, outcome);
        }
        for i in 0..self.spaces.len() {
            let id = self.spaces[i].id;
            for ev in self.set.take_events(id) {
                self.space_event(now, i, ev);
            }
        }
        for name in self.sup().take_cleared() {
            if let Some(s) = self.spaces.iter_mut().find(|s| s.name == name) {
                s.cleared = true;
            }
            let dropped = self.reg.take(|l| l.space == name);
            tracing::warn!(lockspace = %name, leases = dropped.len(), "lost lockspace cleared: its leases are gone");
        }
        // Forget cleared, left or failed lockspaces once no operation of theirs runs.
        let mut i = 0;
        while i < self.spaces.len() {
            let s = &self.spaces[i];
            let done = s.cleared
                && !self.pending.values().any(|p| match p {
                    Pending::Acquire { space, .. }
                    | Pending::Convert { space, .. }
                    | Pending::Rindex { space, .. }
                    | Pending::RindexRelease { space, .. } => *space == s.name,
                    Pending::Release { leases, .. } => leases.iter().any(|l| l.space == s.name),
                });
            if done && self.set.remove(s.id).is_ok() {
                let s = self.spaces.remove(i);
                let _ = self.sup().remove_space(&s.name);
                for w in s.join_waiters.iter().chain(&s.leave_waiters) {
                    let reason = s.lost.clone().unwrap_or_else(|| "lockspace gone".into());
                    self.reply(*w, err(ErrorCode::LockspaceLost, reason));
                }
                continue;
            }
            i += 1;
        }
        if !self.inq_waiters.is_empty() {
            self.sanlock_inq_waiters();
        }
        if !self.rem_after_kill.is_empty() {
            self.sanlock_rem_after_kill();
        }
        if self.stopping {
            self.begin_leaving_all(now);
        }
    }

    fn space_event(&mut self, now: Time, i: usize, ev: DeltaEvent) {
        let name = self.spaces[i].name.clone();
        let id = self.spaces[i].id;
        match ev {
            DeltaEvent::Joined { generation } => {
                let deadline = self.set.renewal_deadline(id).unwrap_or(now);
                tracing::info!(lockspace = %name, generation, "joined");
                if let Err(e) = self.sup().joined(&name, generation, deadline) {
                    tracing::error!(lockspace = %name, error = %e, "supervisor refused the join: leaving");
                    let _ = self.set.leave(id, now);
                }
                let waiters = std::mem::take(&mut self.spaces[i].join_waiters);
                for w in waiters {
                    self.reply(
                        w,
                        Reply::Ok(json!({"lockspace": name, "generation": generation})),
                    );
                }
            }
            DeltaEvent::JoinFailed { error } => {
                tracing::error!(lockspace = %name, error = %error, "join failed");
                let waiters = std::mem::take(&mut self.spaces[i].join_waiters);
                for w in waiters {
                    self.reply(w, err(ErrorCode::Failed, format!("join {name}: {error}")));
                }
                self.spaces[i].cleared = true;
            }
            DeltaEvent::Renewed {
                read_latency,
                write_latency,
            } => {
                if let Some(d) = self.set.renewal_deadline(id) {
                    let note = RenewalNote {
                        at_unix_ms: unix_ms(),
                        latency_ms: (read_latency + write_latency).as_millis() as u64,
                        ok: true,
                        error: None,
                    };
                    self.sup().renewed(&name, now, d, note);
                }
            }
            DeltaEvent::RenewalFailed { error } => {
                tracing::warn!(lockspace = %name, error = %error, "renewal failed");
                self.sup().renewal_failed(
                    &name,
                    RenewalNote {
                        at_unix_ms: unix_ms(),
                        latency_ms: 0,
                        ok: false,
                        error: Some(error.to_string()),
                    },
                );
            }
            DeltaEvent::Lost { error } => {
                tracing::error!(lockspace = %name, error = %error, "lockspace lost: its lease holders will be killed");
                self.spaces[i].lost = Some(error.to_string());
                self.sup().lost(&name, now);
                for w in std::mem::take(&mut self.spaces[i].join_waiters) {
                    self.reply(
                        w,
                        err(ErrorCode::LockspaceLost, format!("join {name}: {error}")),
                    );
                }
            }
            DeltaEvent::BitSet { from, events } => {
                tracing::info!(lockspace = %name, ?from, "hosts set our bit: examining request records");
                self.examine(&name, None);
                if !events.is_empty() {
                    let our_host_id = self.spaces[i].spec.host_id;
                    self.deliver_events(i, our_host_id, &events);
                }
            }
            DeltaEvent::Released => {
                tracing::info!(lockspace = %name, "left");
                let waiters = std::mem::take(&mut self.spaces[i].leave_waiters);
                for w in waiters {
                    self.reply(w, Reply::Ok(json!({"lockspace": name, "left": true})));
                }
                self.spaces[i].cleared = true;
            }
        }
    }

    fn begin_leaving_all(&mut self, now: Time) {
        if !self.reg.is_empty() {
            return;
        }
        // Joined lockspaces release their host id (Left follows); a joining one is left once
        // joined (the next pass); failed, left, idle and lost ones (holding no lease, checked
        // above) have nothing to release on disk.
        for s in &mut self.spaces {
            match self.set.state(s.id) {
                Some(LockspaceState::Joined { .. }) => {
                    let _ = self.set.leave(s.id, now);
                }
                Some(LockspaceState::Joining { .. }) => {}
                _ => s.cleared = true,
            }
        }
    }

    fn wait_and_serve(&mut self) -> Result<(), ServerError> {
        let now = self.clock.now();
        let timeout = self
            .set
            .next_wakeup()
            .map_or(Duration::from_secs(1), |t| t.saturating_since(now))
            .min(Duration::from_secs(1));
        // Sub-millisecond timers round up: never spin.
        let ms = u16::try_from(timeout.as_millis().max(1)).unwrap_or(1000);
        let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(8 + self.conns.len());
        fds.push(PollFd::new(self.signals.as_fd(), PollFlags::POLLIN));
        fds.push(PollFd::new(self.wake.as_fd(), PollFlags::POLLIN));
        fds.push(PollFd::new(self.listener.as_fd(), PollFlags::POLLIN));
        let sl_at = fds.len();
        if let Some((l, _)) = &self.sanlock_listener {
            fds.push(PollFd::new(l.as_fd(), PollFlags::POLLIN));
        }
        let notify: Option<BorrowedFd<'_>> = self.set.notify_fd();
        let base = fds.len();
        if let Some(n) = notify {
            fds.push(PollFd::new(n, PollFlags::POLLIN));
        }
        let conn_base = fds.len();
        let mut conn_idx = Vec::with_capacity(self.conns.len());
        for (i, c) in self.conns.iter().enumerate() {
            if let Some(c) = c {
                let mut fl = PollFlags::empty();
                if !c.busy && !c.closing && c.inbuf.len() < proto::FRAME_MAX_BYTES + 4 {
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
                JobReply::Requested {
                    space,
                    result,
                    sanlock,
                } => self.requested(k, &space, result, sanlock),
                JobReply::Examined {
                    space,
                    resource,
                    record,
                } => self.examined(&space, resource, record),
                JobReply::RindexDone { space, held, reply } => {
                    self.rindex_done(k, &space, *held, reply)
                }
            }
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
            self.release_owner(Owner::Pid(p), None);
        }
        Ok(())
    }

    fn on_signal(&mut self, signo: i32) {
        if signo == libc::SIGHUP {
            tracing::info!("SIGHUP ignored (configuration is read at start-up)");
            return;
        }
        let held = self.reg.len();
        if held > 0 {
            let pids: Vec<i32> = self.reg.iter().map(|l| l.pid).collect();
            tracing::error!(
                leases = held,
                ?pids,
                "asked to stop while leases are held: refusing (exiting now would leave the \
                 watchdog to reset this host). Release the leases or stop their holders first."
            );
            return;
        }
        tracing::info!(signal = signo, "stopping: leaving every lockspace");
        self.stopping = true;
        let now = self.clock.now();
        self.begin_leaving_all(now);
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
                    if let Ok(b) = proto::encode(&err(
                        ErrorCode::Full,
                        format!("too many clients ({CLIENTS_MAX})"),
                    )) {
                        let _ = s.write(&b);
                    }
                    continue;
                }
            };
            self.next_serial += 1;
            self.conns[slot] = Some(Conn {
                serial: self.next_serial,
                stream,
                pid: cred.pid(),
                uid: cred.uid(),
                name: if sanlock {
                    cred.pid().to_string()
                } else {
                    format!("pid {}", cred.pid())
                },
                // sanlock clients have no hello; the native layer treats them as greeted.
                hello: sanlock,
                inbuf: Vec::with_capacity(512),
                outbuf: Vec::new(),
                busy: false,
                closing: false,
                kill_path: None,
                deferred: None,
                proto: if sanlock {
                    Proto::Sanlock(sanlock::SanlockConn::default())
                } else {
                    Proto::Native
                },
                restrict: 0,
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
        let Some(c) = self.conn(k) else {
            return;
        };
        if matches!(c.proto, Proto::Sanlock(_)) {
            return self.sanlock_reply(k, r);
        }
        c.busy = false;
        match proto::encode(&r) {
            Ok(b) => c.outbuf.extend_from_slice(&b),
            Err(e) => {
                let fallback = err(ErrorCode::Failed, format!("reply too large: {e}"));
                if let Ok(b) = proto::encode(&fallback) {
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
            let Some(c) = self.conns.get_mut(idx).and_then(Option::as_mut) else {
                return;
            };
            while c.inbuf.len() < proto::FRAME_MAX_BYTES + 4 {
                match c.stream.read(&mut buf) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => c.inbuf.extend_from_slice(&buf[..n]),
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
                    if let Ok(b) = proto::encode(&r) {
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
        self.release_owner(Owner::Conn(key), None);
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
                        c.name = n.chars().take(64).collect();
                    }
                    Reply::Ok(json!({
                        "version": PROTOCOL_VERSION,
                        "daemon": env!("CARGO_PKG_VERSION"),
                        "host_name": self.host_name.escaped(),
                    }))
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
            .conn(k)
            .is_some_and(|c| c.restrict & crate::sanlock_wire::flags::RESTRICT_ALL != 0)
        {
            return Some(err(
                ErrorCode::Permission,
                "this connection restricted itself: no further requests",
            ));
        }
        match req {
            Request::Hello { .. } => Some(err(ErrorCode::BadRequest, "hello was already said")),
            Request::Restrict {
                all,
                no_sigkill,
                no_sigterm,
            } => {
                use crate::sanlock_wire::flags::{
                    RESTRICT_ALL, RESTRICT_SIGKILL, RESTRICT_SIGTERM,
                };
                if no_sigkill && no_sigterm {
                    return Some(err(
                        ErrorCode::BadRequest,
                        "a holder must be killable by one of SIGKILL and SIGTERM",
                    ));
                }
                let c = self.conn(k)?;
                let bit = |on: bool, b: u32| if on { b } else { 0 };
                c.restrict = bit(all, RESTRICT_ALL)
                    | bit(no_sigkill, RESTRICT_SIGKILL)
                    | bit(no_sigterm, RESTRICT_SIGTERM);
                Some(Reply::Ok(json!({})))
            }
            Request::Status {} => Some(Reply::Ok(self.status())),
            Request::LockspaceList {} => Some(Reply::Ok(self.lockspace_list())),
            Request::Hosts { lockspace } => Some(self.hosts(&lockspace)),
            Request::LockspaceAdd {
                spec,
                wait,
                io_timeout_s,
            } => self.request_lockspace_add(Some(k), &spec, wait, io_timeout_s),
            Request::LockspaceRemove { name, wait } => self.lockspace_remove(k, &name, wait),
            r @ Request::Rindex { .. } => self.rindex(k, &r),
            Request::LockspaceConfig {
                name,
                used,
                used_by_orphans,
            } => Some(self.lockspace_config(&name, used, used_by_orphans)),
            Request::Acquire { .. } => self.acquire(k, req, None),
            Request::Release {
                resources,
                all,
                pid,
                lvb_hex,
            } => self.release(None, k, &resources, all, pid, lvb_hex.as_deref()),
            Request::Inquire { pid } => Some(self.inquire(k, pid, None)),
            Request::Owners { resource } => self.owners(k, &resource),
            Request::Convert {
                resource,
                shared,
                pid,
                no_wait,
            } => self.convert(k, &resource, shared, pid, no_wait),
            Request::Request { resource, force } => {
                self.start_request(k, &resource, None, if force { 1 } else { 2 }, false)
            }
            Request::LvbGet { resource, pid } => Some(self.lvb_get(k, &resource, pid)),
            Request::LvbSet { resource, hex, pid } => Some(self.lvb_set(k, &resource, &hex, pid)),
            Request::KillPath { path, args } => {
                if !path.starts_with('/') || args.len() > 16 {
                    return Some(err(
                        ErrorCode::BadRequest,
                        "kill path must be an absolute program path with at most 16 arguments",
                    ));
                }
                let c = self.conn(k)?;
                c.kill_path = Some((path, args));
                Some(Reply::Ok(json!({})))
            }
        }
    }

    fn space_index(&self, name: &str) -> Option<usize> {
        self.spaces.iter().position(|s| s.name == name)
    }

    /// Starts probes for `keys` not known yet; true when all are known.
    fn ensure_probed(&mut self, keys: &[ProbeKey]) -> bool {
        let mut all = true;
        for key in keys {
            if self.areas.contains_key(key) {
                continue;
            }
            all = false;
            if self.probing.contains_key(key) || self.probing.len() >= PROBES_MAX {
                continue;
            }
            self.probing.insert(key.clone(), ());
            let need_device = !self.disks.contains_key(&key.0);
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
        all
    }

    fn probe_done(&mut self, r: ProbeResult) {
        self.probing.remove(&r.key);
        let mut result = r.geometry.map(|geometry| AreaInfo { geometry });
        match r.device {
            Some(Ok(dev)) if !self.disks.contains_key(&r.key.0) => {
                match self.set.backend_mut().add_disk(dev) {
                    Ok(id) => {
                        self.disks.insert(r.key.0.clone(), id);
                    }
                    Err(e) => result = Err(e.to_string()),
                }
            }
            Some(Err(e)) if !self.disks.contains_key(&r.key.0) => result = Err(e),
            _ => {}
        }
        let failed = result.is_err();
        self.areas.insert(r.key.clone(), result);
        // Re-dispatch every deferred request (each checks its own keys again).
        for idx in 0..self.conns.len() {
            let Some(k) = self.key(idx) else { continue };
            let Some(d) = self.conn(k).and_then(|c| c.deferred.take()) else {
                continue;
            };
            let reply = match d {
                Deferred::Native(req) => self.dispatch(k, req),
                Deferred::SanlockAcquire(req, target) => {
                    let r = self.acquire(k, req.clone(), Some(target));
                    if let Some(c) = self.conn(k) {
                        if let Some(Deferred::Native(_)) = c.deferred {
                            c.deferred = Some(Deferred::SanlockAcquire(req, target));
                        }
                    }
                    r
                }
            };
            if let Some(reply) = reply {
                self.reply(k, reply);
            }
        }
        if failed {
            // Failed probes are not cached: a later request tries again.
            self.areas.remove(&r.key);
        }
    }

    fn area(&self, key: &ProbeKey) -> Option<Result<AreaInfo, String>> {
        self.areas.get(key).cloned()
    }

    fn request_lockspace_add(
        &mut self,
        k: Option<ClientKey>,
        spec: &str,
        wait: bool,
        io_timeout_s: Option<u64>,
    ) -> Option<Reply> {
        let spec = match LockspaceSpec::parse(spec) {
            Ok(s) => s,
            Err(e) => return Some(err(ErrorCode::BadRequest, format!("lockspace spec: {e}"))),
        };
        let io_timeout = io_timeout_s.unwrap_or(self.cfg.io_timeout_s);
        if !(1..=crate::config::IO_TIMEOUT_MAX_S).contains(&io_timeout) {
            return Some(err(
                ErrorCode::BadRequest,
                format!(
                    "io_timeout_s {io_timeout} is out of range (1..={})",
                    crate::config::IO_TIMEOUT_MAX_S
                ),
            ));
        }
        let name = spec.name.escaped();
        if self.space_index(&name).is_some() {
            return Some(err(
                ErrorCode::Exists,
                format!("lockspace {name} is already added"),
            ));
        }
        if self.stopping {
            return Some(err(ErrorCode::Busy, "tenured is stopping"));
        }
        let key = (PathBuf::from(&spec.disk.path), spec.disk.offset);
        if !self.ensure_probed(std::slice::from_ref(&key)) {
            match k {
                Some(k) => {
                    let c = self.conn(k)?;
                    c.deferred = Some(Deferred::Native(Request::LockspaceAdd {
                        spec: spec.to_string(),
                        wait,
                        io_timeout_s,
                    }));
                    return None;
                }
                None => {
                    // Start-up: wait for the probe here (nothing else runs yet).
                    while !self.areas.contains_key(&key) {
                        match self.probe_rx.recv_timeout(Duration::from_secs(60)) {
                            Ok(r) => {
                                let done = r.key == key;
                                let fail = self.probe_failed_now(r);
                                if done {
                                    if let Some(e) = fail {
                                        return Some(err(ErrorCode::Io, e));
                                    }
                                }
                            }
                            Err(_) => return Some(err(ErrorCode::Io, "probe timed out")),
                        }
                    }
                }
            }
        }
        let info = match self.area(&key) {
            Some(Ok(i)) => i,
            Some(Err(e)) => return Some(err(ErrorCode::Io, format!("{}: {e}", spec.disk.path))),
            None => return Some(err(ErrorCode::Io, "probe failed")),
        };
        if spec.host_id == 0 || spec.host_id > info.geometry.hosts_max() {
            return Some(err(
                ErrorCode::BadRequest,
                format!(
                    "host id {} is out of range (1..={})",
                    spec.host_id,
                    info.geometry.hosts_max()
                ),
            ));
        }
        let Some(&disk) = self.disks.get(&key.0) else {
            return Some(err(ErrorCode::Io, "device not open"));
        };
        if let Err(e) = self.sup().add_space(&name, spec.host_id) {
            return Some(err(
                ErrorCode::Failed,
                format!("cannot supervise {name}: {e}"),
            ));
        }
        let dcfg = DeltaConfig {
            space_name: spec.name,
            host_id: spec.host_id,
            host_name: self.host_name,
            geometry: info.geometry,
            area_offset: spec.disk.offset,
            // Validated above: 1..=IO_TIMEOUT_MAX_S fits u16.
            // W in the lockspace's rules is only ever another host's: when it is dead, when
            // its slot may be taken over (core/src/timeouts.rs).
            timeouts: Timeouts::new(
                u16::try_from(io_timeout).unwrap_or(u16::MAX),
                self.cfg.other_hosts_fire_timeout_s(),
            ),
        };
        let id = match self.set.add(dcfg, disk) {
            Ok(id) => id,
            Err(e) => {
                let _ = self.sup().remove_space(&name);
                return Some(err(ErrorCode::Full, e.to_string()));
            }
        };
        let now = self.clock.now();
        if let Err(e) = self.set.join(id, now) {
            let _ = self.set.remove(id);
            let _ = self.sup().remove_space(&name);
            return Some(err(ErrorCode::Failed, e.to_string()));
        }
        tracing::info!(lockspace = %name, host_id = spec.host_id, path = %spec.disk.path, "joining");
        let mut space = Space {
            name: name.clone(),
            id,
            spec,
            join_waiters: Vec::new(),
            leave_waiters: Vec::new(),
            lost: None,
            cleared: false,
            event_fds: Vec::new(),
            used: false,
            used_by_orphans: false,
        };
        match (k, wait) {
            (Some(k), true) => {
                space.join_waiters.push(k);
                self.spaces.push(space);
                None
            }
            _ => {
                self.spaces.push(space);
                Some(Reply::Ok(json!({"lockspace": name, "state": "joining"})))
            }
        }
    }

    /// Handles a probe result during start-up; returns its error if it failed.
    fn probe_failed_now(&mut self, r: ProbeResult) -> Option<String> {
        let key = r.key.clone();
        self.probe_done(r);
        match self.areas.get(&key) {
            Some(Ok(_)) => None,
            _ => Some(format!("{}: cannot read the lease area", key.0.display())),
        }
    }

    /// Marks a lockspace used / used while orphans exist, and tells the supervisor what that
    /// means now.
    fn lockspace_config(
        &mut self,
        name: &str,
        used: Option<bool>,
        used_by_orphans: Option<bool>,
    ) -> Reply {
        let Some(i) = self.space_index(name) else {
            return err(ErrorCode::NotFound, format!("no lockspace {name}"));
        };
        let lost = self.spaces[i].lost.is_some()
            || !matches!(
                self.set.state(self.spaces[i].id),
                Some(LockspaceState::Joined { .. } | LockspaceState::Joining { .. })
            );
        if lost && (used == Some(true) || used_by_orphans == Some(true)) {
            return err(
                ErrorCode::LockspaceLost,
                format!("lockspace {name} is lost or left: it cannot be marked used"),
            );
        }
        if let Some(u) = used {
            self.spaces[i].used = u;
        }
        if let Some(u) = used_by_orphans {
            self.spaces[i].used_by_orphans = u;
        }
        self.refresh_used(name);
        let s = &self.spaces[i];
        tracing::info!(lockspace = %name, used = s.used, used_by_orphans = s.used_by_orphans, "lockspace config");
        Reply::Ok(json!({"lockspace": name, "used": s.used, "used_by_orphans": s.used_by_orphans}))
    }

    /// Tells the supervisor whether a lockspace counts as used now.
    fn refresh_used(&mut self, name: &str) {
        let Some(i) = self.space_index(name) else {
            return;
        };
        let orphans = self
            .reg
            .iter()
            .any(|l| l.space == name && l.owner == Owner::Orphan);
        let s = &self.spaces[i];
        let used = s.used || (s.used_by_orphans && orphans);
        let _ = self.sup().set_used(name, used);
    }

    fn lockspace_remove(&mut self, k: ClientKey, name: &str, wait: bool) -> Option<Reply> {
        let Some(i) = self.space_index(name) else {
            return Some(err(ErrorCode::NotFound, format!("no lockspace {name}")));
        };
        if self.spaces[i].used {
            return Some(err(
                ErrorCode::Busy,
                format!("lockspace {name} is marked used: clear it first (lockspace config)"),
            ));
        }
        let held = self.reg.iter().filter(|l| l.space == name).count();
        if held > 0 {
            return Some(err(
                ErrorCode::Busy,
                format!("lockspace {name} has {held} lease(s) held; release them first"),
            ));
        }
        let now = self.clock.now();
        let id = self.spaces[i].id;
        match self.set.state(id) {
            Some(LockspaceState::Joined { .. } | LockspaceState::Joining { .. }) => {
                if let Err(e) = self.set.leave(id, now) {
                    return Some(err(ErrorCode::Busy, e.to_string()));
                }
                if wait {
                    self.spaces[i].leave_waiters.push(k);
                    return None;
                }
                Some(Reply::Ok(json!({"lockspace": name, "state": "leaving"})))
            }
            _ => {
                self.spaces[i].cleared = true;
                Some(Reply::Ok(json!({"lockspace": name, "left": true})))
            }
        }
    }

    fn lockspace_list(&self) -> serde_json::Value {
        let now = self.clock.now();
        let list: Vec<_> = self
            .spaces
            .iter()
            .map(|s| {
                let state = self.set.state(s.id);
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
                let history = self.set.renewal_history(s.id);
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
                    "io_timeout_s": self.set.config(s.id).map(|c| c.timeouts.io_timeout_s),
                    // The W assumed for the other hosts, and when one counts as dead (8T + W,
                    // with its own T; ours shown here).
                    "other_hosts_fire_timeout_s": self.set.config(s.id).map(|c| c.timeouts.watchdog_fire_s),
                    "host_dead_after_s": self.set.config(s.id).map(|c| c.timeouts.host_dead().as_secs()),
                    "renewal_deadline_in_ms": self.set.renewal_deadline(s.id).map(|d| d.saturating_since(now).as_millis() as u64),
                    "leases": self.reg.iter().filter(|l| l.space == s.name).count(),
                    "last_renewals": last,
                })
            })
            .collect();
        json!({"lockspaces": list})
    }

    fn hosts(&self, name: &str) -> Reply {
        let Some(i) = self.space_index(name) else {
            return err(ErrorCode::NotFound, format!("no lockspace {name}"));
        };
        let now = self.clock.now();
        let hosts: Vec<_> = self
            .set
            .hosts(self.spaces[i].id, now)
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
        Reply::Ok(json!({"lockspace": name, "hosts": hosts}))
    }

    fn status(&self) -> serde_json::Value {
        let now = self.clock.now();
        json!({
            "daemon": env!("CARGO_PKG_VERSION"),
            "host_name": self.host_name.escaped(),
            "uptime_s": now.saturating_since(self.started).as_secs(),
            "io_backend": self.backend_name,
            "io_fallback_reason": self.fallback_reason,
            "io_timeout_s": self.cfg.io_timeout_s,
            "socket": self.socket_path,
            "clients": self.conns.iter().flatten().map(|c| json!({"pid": c.pid, "uid": c.uid, "name": c.name})).collect::<Vec<_>>(),
            "lockspaces": self.lockspace_list()["lockspaces"],
            "leases": self.reg.iter().filter(|l| l.joining.is_none()).map(Lease::json).collect::<Vec<_>>(),
            "operations_in_flight": self.set.ops_in_flight(),
            // Local exclusion: what this host is doing with each resource now (an acquire of
            // it by another client is refused meanwhile: busy, or releasing).
            "resources_in_flight": self.reg.claims().in_flight_all().iter().map(|(k, op)| json!({
                "lockspace": k.space,
                "resource": k.name.escaped(),
                "operation": op,
            })).collect::<Vec<_>>(),
            "supervisor": self.sup().status(),
        })
    }

    /// The holder pid a request acts for, and whether it is "on behalf of" a pid (matched by
    /// pid) rather than a connection's own leases. `target` is a registered connection chosen
    /// by the sanlock protocol (its own or one found by pid).
    fn resolve(
        &mut self,
        k: ClientKey,
        pid: Option<i32>,
        target: Option<ClientKey>,
    ) -> Result<(i32, bool), Reply> {
        match target {
            Some(t) => self
                .conn(t)
                .map(|c| (c.pid, false))
                .ok_or_else(|| err(ErrorCode::NotFound, "client gone")),
            None => self.privileged_pid(k, pid),
        }
    }

    fn privileged_pid(&mut self, k: ClientKey, pid: Option<i32>) -> Result<(i32, bool), Reply> {
        let c = self
            .conn(k)
            .ok_or_else(|| err(ErrorCode::Failed, "client gone"))?;
        match pid {
            None => Ok((c.pid, false)),
            Some(p) if p == c.pid => Ok((p, false)),
            Some(p) if c.uid == 0 => {
                if p <= 0 {
                    return Err(err(ErrorCode::BadRequest, format!("pid {p} is not valid")));
                }
                Ok((p, true))
            }
            Some(p) => Err(err(
                ErrorCode::Permission,
                format!(
                    "only root may act for another pid ({p}); this client runs as uid {}",
                    c.uid
                ),
            )),
        }
    }

    fn acquire(&mut self, k: ClientKey, req: Request, target: Option<ClientKey>) -> Option<Reply> {
        let Request::Acquire {
            resources,
            no_wait,
            lvb,
            pid,
        } = &req
        else {
            return Some(err(ErrorCode::Failed, "internal: not an acquire"));
        };
        let (pid, on_behalf) = match self.resolve(k, *pid, target) {
            Ok(x) => x,
            Err(r) => return Some(r),
        };
        let me = target.unwrap_or(k);
        if resources.is_empty() || resources.len() > tenure_core::lockspace::RESOURCES_PER_OP_MAX {
            return Some(err(
                ErrorCode::BadRequest,
                format!(
                    "acquire takes 1 to {} resources",
                    tenure_core::lockspace::RESOURCES_PER_OP_MAX
                ),
            ));
        }
        let mut specs = Vec::with_capacity(resources.len());
        for r in resources {
            match ResourceSpec::parse(r) {
                Ok(s) if s.disks.len() == 1 => specs.push(s),
                Ok(s) => {
                    return Some(err(
                        ErrorCode::BadRequest,
                        format!(
                            "{}: leases on {} disks are not supported yet (one PATH:OFFSET)",
                            s.name.escaped(),
                            s.disks.len()
                        ),
                    ))
                }
                Err(e) => {
                    return Some(err(
                        ErrorCode::BadRequest,
                        format!("resource spec {r:?}: {e}"),
                    ))
                }
            }
        }
        let space = specs[0].lockspace.escaped();
        if specs.iter().any(|s| s.lockspace.escaped() != space) {
            return Some(err(
                ErrorCode::BadRequest,
                "all resources of one acquire must be in one lockspace",
            ));
        }
        let shared = specs[0].mode == ResourceMode::Shared;
        if specs
            .iter()
            .any(|s| (s.mode == ResourceMode::Shared) != shared)
        {
            return Some(err(
                ErrorCode::BadRequest,
                "one acquire takes either shared or exclusive resources, not both",
            ));
        }
        let Some(si) = self.space_index(&space) else {
            return Some(err(
                ErrorCode::NotFound,
                format!("no lockspace {space} (add it first)"),
            ));
        };
        if let Some(why) = &self.spaces[si].lost {
            return Some(err(
                ErrorCode::LockspaceLost,
                format!("lockspace {space} was lost: {why}"),
            ));
        }
        if self.stopping {
            return Some(err(ErrorCode::Busy, "tenured is stopping"));
        }
        for (i, s) in specs.iter().enumerate() {
            if specs[..i].iter().any(|o| o.name == s.name) {
                return Some(err(
                    ErrorCode::BadRequest,
                    format!("{} is named twice in one acquire", s.name.escaped()),
                ));
            }
        }
        // Local exclusion, before anything starts (crate::host::registry): all or nothing.
        let names: Vec<Name> = specs.iter().map(|s| s.name).collect();
        let admits = match self.reg.admit_acquire(&space, &names, shared) {
            Ok(a) => a,
            Err((key, r)) => return Some(refusal_reply(&key, r)),
        };
        for (n, a) in names.iter().zip(&admits) {
            let lvb_missing = self
                .reg
                .shared_hold(&ResourceKey::new(&space, *n))
                .is_some_and(|l| l.held.acquired.lvb.is_none());
            if *a == Admit::Join && *lvb && lvb_missing {
                return Some(err(
                    ErrorCode::BadRequest,
                    format!(
                        "{} is held shared on this host without its LVB: the first holder must acquire it with lvb",
                        n.escaped()
                    ),
                ));
            }
        }
        if self.reg.len() + specs.len() > LEASES_MAX {
            return Some(err(
                ErrorCode::Full,
                format!("too many leases ({LEASES_MAX})"),
            ));
        }
        let keys: Vec<ProbeKey> = specs
            .iter()
            .map(|s| (PathBuf::from(&s.disks[0].path), s.disks[0].offset))
            .collect();
        if !self.ensure_probed(&keys) {
            let c = self.conn(k)?;
            c.deferred = Some(Deferred::Native(req.clone()));
            return None;
        }
        let client_name = self.conn(me).map(|c| c.name.clone()).unwrap_or_default();
        let owner = if on_behalf {
            Owner::Pid(pid)
        } else {
            Owner::Conn(me)
        };
        let lease_of = |s: &ResourceSpec, held: HeldResource| {
            let location = (s.disks[0].path.clone(), s.disks[0].offset);
            Lease::new(&space, location, held, owner, pid, &client_name, unix_ms())
        };
        // Joiners of this host's shared holds take a copy of the hold's record.
        let mut joins = Vec::new();
        for (s, a) in specs.iter().zip(&admits) {
            if *a == Admit::Join {
                let key = ResourceKey::new(&space, s.name);
                let Some(h) = self.reg.shared_hold(&key) else {
                    return Some(err(ErrorCode::Failed, "internal: shared hold gone"));
                };
                joins.push(lease_of(s, h.held.clone()));
            }
        }
        if admits.iter().all(|a| *a == Admit::Join) {
            let now = self.clock.now();
            return Some(self.grant(now, k, &space, owner, pid, joins));
        }
        let mut targets = Vec::with_capacity(specs.len());
        let mut on_disk = Vec::with_capacity(specs.len());
        let mut locations = Vec::with_capacity(specs.len());
        for ((s, key), a) in specs.iter().zip(&keys).zip(&admits) {
            if *a == Admit::Join {
                continue;
            }
            on_disk.push(ResourceKey::new(&space, s.name));
            locations.push((s.disks[0].path.clone(), s.disks[0].offset));
            let info = match self.area(key) {
                Some(Ok(i)) => i,
                Some(Err(e)) => {
                    return Some(err(ErrorCode::Io, format!("{}: {e}", key.0.display())))
                }
                None => return Some(err(ErrorCode::Io, "probe failed")),
            };
            let Some(&disk) = self.disks.get(&key.0) else {
                return Some(err(ErrorCode::Io, "device not open"));
            };
            targets.push(ResourceTarget {
                name: s.name,
                disk,
                area_offset: key.1,
                geometry: info.geometry,
                expect_lver: match s.mode {
                    ResourceMode::ExclusiveAtLver(v) => Some(v),
                    _ => None,
                },
                mirrors: Vec::new(),
            });
        }
        let opts = AcquireOptions {
            shared,
            no_wait: *no_wait,
            read_lvb: *lvb,
        };
        let now = self.clock.now();
        let id = match self
            .set
            .start_acquire(self.spaces[si].id, targets, opts, now)
        {
            Ok(id) => id,
            Err(e) => return Some(op_error_reply(specs[0].name, &e)),
        };
        self.reg.acquire_started(id, &on_disk, joins);
        self.pending.insert(
            id,
            Pending::Acquire {
                client: k,
                client_name,
                space,
                locations,
                owner,
                pid,
                on_disk,
            },
        );
        None
    }

    /// Makes `leases` (all of one acquire, held on disk now) the holder's: registers the holder
    /// pid with the supervisor, or releases them at once when the holder is gone.
    fn grant(
        &mut self,
        now: Time,
        client: ClientKey,
        space: &str,
        owner: Owner,
        pid: i32,
        leases: Vec<Lease>,
    ) -> Reply {
        let (kill_path, restrict) = match owner {
            Owner::Conn(o) => self
                .conn(o)
                .map_or((None, 0), |c| (c.kill_path.clone(), c.restrict)),
            _ => self
                .conn(client)
                .map_or((None, 0), |c| (c.kill_path.clone(), 0)),
        };
        let alive_owner = match owner {
            Owner::Conn(k) => self.conn(k).is_some(),
            _ => true,
        };
        let holder = if alive_owner {
            self.sup().add_holder(space, pid, kill_path, restrict)
        } else {
            Err(crate::supervise::SuperviseError::Pid(
                pid,
                "client disconnected".into(),
            ))
        };
        if let Err(e) = holder {
            // The holder is gone: give the leases back at once.
            tracing::info!(lockspace = %space, pid, error = %e, "holder gone before the acquire ended: releasing");
            self.start_release(now, None, leases, None);
            return err(ErrorCode::Failed, format!("holder pid {pid}: {e}"));
        }
        if let Owner::Pid(p) = owner {
            if let std::collections::hash_map::Entry::Vacant(v) = self.watched.entry(p) {
                if let Some(fd) = rustix::process::Pid::from_raw(p).and_then(|pp| {
                    rustix::process::pidfd_open(pp, rustix::process::PidfdFlags::empty()).ok()
                }) {
                    v.insert(fd);
                }
            }
        }
        let reply: Vec<_> = leases
            .iter()
            .map(|l| {
                let mut j = l.json();
                if let Some(lvb) = &l.held.acquired.lvb {
                    j["lvb_hex"] = json!(hex(lvb));
                }
                j
            })
            .collect();
        for l in &leases {
            tracing::info!(lockspace = %l.space, resource = %l.resource.escaped(), lver = l.held.acquired.lver, shared = l.held.acquired.shared, pid, "acquired");
        }
        self.reg.extend(leases);
        Reply::Ok(json!({"leases": reply}))
    }

    fn op_done(&mut self, now: Time, id: OpId, outcome: OpOutcome) {
        let Some(p) = self.pending.remove(&id) else {
            return;
        };
        match p {
            Pending::Acquire {
                client,
                client_name,
                space,
                locations,
                owner,
                pid,
                on_disk,
            } => {
                // Its joiners of shared holds (still here unless their owner went away).
                let mut joined = self.reg.acquire_ended(id, &on_disk);
                match outcome {
                    OpOutcome::Acquired(held) => {
                        let mut leases: Vec<Lease> = held
                            .into_iter()
                            .zip(locations)
                            .map(|(h, loc)| {
                                Lease::new(&space, loc, h, owner, pid, &client_name, unix_ms())
                            })
                            .collect();
                        leases.append(&mut joined);
                        let r = self.grant(now, client, &space, owner, pid, leases);
                        self.reply(client, r);
                    }
                    OpOutcome::Failed {
                        resource,
                        error,
                        still_held,
                    } => {
                        if !still_held.is_empty() {
                            tracing::error!(lockspace = %space, count = still_held.len(), "acquire failed and unwinding it failed too: leases stay ours on disk");
                            self.adopt_orphans(&space, still_held);
                        }
                        // The joiners give up: a shared hold they alone kept goes now.
                        self.start_release(now, None, joined, None);
                        self.reply(client, op_error_reply(resource, &error));
                    }
                    OpOutcome::Released => {}
                }
            }
            Pending::Convert {
                client,
                space,
                resource,
            } => {
                self.reg
                    .end(&ResourceKey::new(&space, resource), InFlight::Convert);
                let at = self
                    .reg
                    .iter()
                    .position(|l| l.space == space && l.resource == resource);
                let reply = match outcome {
                    OpOutcome::Acquired(mut held) => {
                        let h = held.remove(0);
                        let shared = h.acquired.shared;
                        if let Some(i) = at {
                            self.reg[i].held = h;
                        }
                        tracing::info!(lockspace = %space, resource = %resource.escaped(), shared, "converted");
                        Reply::Ok(json!({"resource": resource.escaped(), "shared": shared}))
                    }
                    OpOutcome::Failed {
                        resource: r,
                        error,
                        mut still_held,
                    } => {
                        // Still held in the old mode; a conversion to exclusive rewrote our
                        // dblock, and the hold's record must say so.
                        if let (Some(i), Some(h)) = (at, still_held.pop()) {
                            self.reg[i].held = h;
                        }
                        op_error_reply(r, &error)
                    }
                    OpOutcome::Released => err(ErrorCode::Failed, "internal: convert released"),
                };
                if let Some(i) = at {
                    self.reg[i].converting = false;
                    // Its owner went away meanwhile: release it now.
                    let gone = match self.reg[i].owner {
                        Owner::Conn(c) => self.conn(c).is_none(),
                        Owner::Pid(p) => rustix::process::Pid::from_raw(p)
                            .is_none_or(|p| rustix::process::test_kill_process(p).is_err()),
                        Owner::Orphan => false,
                    };
                    if gone {
                        let l = self.reg.remove(i);
                        let now = self.clock.now();
                        let _ = self.start_release(now, None, vec![l], None);
                    }
                }
                self.reply(client, reply);
            }
            Pending::Rindex { client, space, job } => {
                // The private lease stays claimed while the index job runs under it (until
                // rindex_done starts its release): no other local operation may take it then.
                let key = ResourceKey::new(&space, tenure_core::direct::rindex::lease_name());
                match outcome {
                    OpOutcome::Acquired(mut held) if !held.is_empty() => {
                        self.rindex_locked(client, space, job, held.remove(0));
                    }
                    OpOutcome::Failed {
                        resource, error, ..
                    } => {
                        self.reg.end(&key, InFlight::Acquire);
                        let r = op_error_reply(resource, &error);
                        self.reply(client, r);
                    }
                    _ => {
                        self.reg.end(&key, InFlight::Acquire);
                        self.reply(client, err(ErrorCode::Failed, "internal: rindex lease"));
                    }
                }
            }
            Pending::RindexRelease {
                client,
                space,
                reply,
            } => {
                self.reg.end(
                    &ResourceKey::new(&space, tenure_core::direct::rindex::lease_name()),
                    InFlight::Release,
                );
                if let OpOutcome::Failed { error, .. } = &outcome {
                    tracing::warn!(lockspace = %space, error = %error, "the resource index's private lease was not released");
                }
                self.reply(client, *reply);
            }
            Pending::Release {
                client,
                leases,
                local,
            } => {
                self.reg.release_ended(&leases);
                let reply = match outcome {
                    OpOutcome::Released => {
                        for l in &leases {
                            tracing::info!(lockspace = %l.space, resource = %l.resource.escaped(), "released");
                        }
                        let names: Vec<String> = leases
                            .iter()
                            .map(|l| l.resource)
                            .chain(local)
                            .map(|n| n.escaped())
                            .collect();
                        Reply::Ok(json!({ "released": names }))
                    }
                    OpOutcome::Failed {
                        resource,
                        error,
                        still_held,
                    } => {
                        if matches!(error, OpError::LockspaceLost | OpError::NotJoined) {
                            // Void with the lockspace: nothing to do on disk.
                        } else if let Some(l) = leases.first() {
                            let space = l.space.clone();
                            self.adopt_orphans(&space, still_held);
                        }
                        op_error_reply(resource, &error)
                    }
                    OpOutcome::Acquired(_) => err(ErrorCode::Failed, "internal: release acquired"),
                };
                self.forget_holders(&leases);
                if let Some(c) = client {
                    self.reply(c, reply);
                }
            }
        }
    }

    fn adopt_orphans(&mut self, space: &str, held: Vec<HeldResource>) {
        for h in held {
            let location = (String::from("?"), h.target.area_offset);
            self.reg.push(Lease::new(
                space,
                location,
                h,
                Owner::Orphan,
                0,
                "",
                unix_ms(),
            ));
        }
        self.refresh_used(space);
    }

    /// Unregisters holder pids that hold nothing more in a lockspace.
    fn forget_holders(&mut self, gone: &[Lease]) {
        for l in gone {
            if l.pid == 0 {
                continue;
            }
            let still = self
                .reg
                .iter()
                .any(|x| x.space == l.space && x.pid == l.pid);
            if !still {
                self.sup().remove_holder(&l.space, l.pid);
            }
        }
    }

    fn start_release(
        &mut self,
        now: Time,
        client: Option<ClientKey>,
        leases: Vec<Lease>,
        lvb: Option<Vec<u8>>,
    ) -> Option<Reply> {
        // A holder of a shared hold that other local holders (or joiners) keep, or a second
        // lease of one hold in this batch, goes without disk I/O; the hold's last goes to disk.
        let (kept, leases) = self.reg.split_release(leases);
        let mut local: Vec<Name> = Vec::with_capacity(kept.len());
        for l in &kept {
            tracing::info!(lockspace = %l.space, resource = %l.resource.escaped(), pid = l.pid, "released (the shared hold stays for its other local holders)");
            local.push(l.resource);
        }
        self.forget_holders(&kept);
        if leases.is_empty() {
            let names: Vec<String> = local.iter().map(|n| n.escaped()).collect();
            return Some(Reply::Ok(json!({"released": names})));
        }
        // Group by lockspace, at most RESOURCES_PER_OP_MAX per operation; the client gets
        // its reply with the last group (one group in practice).
        let mut groups: Vec<Vec<Lease>> = Vec::new();
        for l in leases {
            match groups.iter_mut().find(|g| {
                g[0].space == l.space && g.len() < tenure_core::lockspace::RESOURCES_PER_OP_MAX
            }) {
                Some(g) => g.push(l),
                None => groups.push(vec![l]),
            }
        }
        let n = groups.len();
        for (gi, g) in groups.into_iter().enumerate() {
            let Some(si) = self.space_index(&g[0].space) else {
                self.forget_holders(&g);
                continue;
            };
            let held: Vec<(HeldResource, Option<Vec<u8>>)> = g
                .iter()
                .map(|l| {
                    (
                        l.held.clone(),
                        lvb.clone().or_else(|| l.lvb_to_write.clone()),
                    )
                })
                .collect();
            let last = gi + 1 == n;
            let who = if last { client } else { None };
            match self.set.start_release(self.spaces[si].id, held, now) {
                Ok(id) => {
                    self.reg.release_started(&g);
                    self.pending.insert(
                        id,
                        Pending::Release {
                            client: who,
                            leases: g,
                            local: if last {
                                std::mem::take(&mut local)
                            } else {
                                Vec::new()
                            },
                        },
                    );
                }
                Err(e) => {
                    let void = matches!(e, OpError::LockspaceLost | OpError::NotJoined);
                    if !void {
                        // Could not even start: keep them as ours, without holder.
                        let space = g[0].space.clone();
                        self.adopt_orphans(&space, g.iter().map(|l| l.held.clone()).collect());
                    }
                    self.forget_holders(&g);
                    if let Some(c) = who {
                        self.reply(c, op_error_reply(g[0].resource, &e));
                    }
                }
            }
        }
        None
    }

    /// Releases every lease of `owner` (connection closed, pid exited).
    fn release_owner(&mut self, owner: Owner, client: Option<ClientKey>) {
        // A lease being converted is released when the conversion ends (Pending::Convert).
        let mine = self.reg.take(|l| l.owner == owner && !l.converting);
        // Leases of a lost lockspace stay until the supervisor clears it (holders dead).
        let (lost, mine): (Vec<Lease>, Vec<Lease>) = mine.into_iter().partition(|l| {
            self.spaces
                .iter()
                .any(|s| s.name == l.space && s.lost.is_some())
        });
        self.reg.extend(lost);
        if mine.is_empty() {
            return;
        }
        let now = self.clock.now();
        if let Some(r) = self.start_release(now, client, mine, None) {
            if let Some(c) = client {
                self.reply(c, r);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn release(
        &mut self,
        target: Option<ClientKey>,
        k: ClientKey,
        resources: &[String],
        all: bool,
        pid: Option<i32>,
        lvb_hex: Option<&str>,
    ) -> Option<Reply> {
        let (pid, on_behalf) = match self.resolve(k, pid, target) {
            Ok(x) => x,
            Err(r) => return Some(r),
        };
        let me = target.unwrap_or(k);
        let owner_ok = |l: &Lease| {
            if l.joining.is_some() {
                // Not granted yet: its acquire is still running.
                false
            } else if on_behalf {
                l.pid == pid
            } else {
                l.owner == Owner::Conn(me)
            }
        };
        let lvb = match lvb_hex.map(unhex).transpose() {
            Ok(v) => v,
            Err(e) => return Some(err(ErrorCode::BadRequest, format!("lvb_hex: {e}"))),
        };
        if all != resources.is_empty() {
            return Some(err(ErrorCode::BadRequest, "give either resources or all"));
        }
        if lvb.is_some() && resources.len() != 1 {
            return Some(err(
                ErrorCode::BadRequest,
                "an LVB is written for exactly one resource",
            ));
        }
        let mut wanted: Vec<(String, Name)> = Vec::new();
        for r in resources {
            let (ls, name) = match r.split_once(':') {
                Some((a, b)) => (a.to_owned(), b),
                None => {
                    return Some(err(
                        ErrorCode::BadRequest,
                        format!("{r:?}: expected LOCKSPACE:RESOURCE"),
                    ))
                }
            };
            match Name::new(name) {
                Ok(n) => wanted.push((ls, n)),
                Err(e) => return Some(err(ErrorCode::BadRequest, format!("{r:?}: {e}"))),
            }
        }
        for (ls, n) in &wanted {
            if !self
                .reg
                .iter()
                .any(|l| owner_ok(l) && &l.space == ls && l.resource == *n)
            {
                return Some(err(
                    ErrorCode::NotFound,
                    format!("{ls}:{} is not held by this client", n.escaped()),
                ));
            }
        }
        let selected = |l: &Lease| {
            owner_ok(l)
                && (all
                    || wanted
                        .iter()
                        .any(|(s, n)| *s == l.space && *n == l.resource))
        };
        if let Some(l) = self.reg.iter().find(|l| selected(l) && l.converting) {
            return Some(err(
                ErrorCode::Busy,
                format!("{}:{} is being converted", l.space, l.resource.escaped()),
            ));
        }
        let lost: Vec<&Lease> = self
            .reg
            .iter()
            .filter(|l| {
                owner_ok(l)
                    && (all
                        || wanted
                            .iter()
                            .any(|(s, n)| *s == l.space && *n == l.resource))
            })
            .filter(|l| {
                self.spaces
                    .iter()
                    .any(|s| s.name == l.space && s.lost.is_some())
            })
            .collect();
        if !lost.is_empty() {
            return Some(err(
                ErrorCode::LockspaceLost,
                format!(
                    "{}: its lockspace was lost; the lease ends when its holders are dead",
                    lost[0].resource.escaped()
                ),
            ));
        }
        let mine = self.reg.take(|l| {
            owner_ok(l)
                && (all
                    || wanted
                        .iter()
                        .any(|(s, n)| *s == l.space && *n == l.resource))
        });
        let now = self.clock.now();
        self.start_release(now, Some(k), mine, lvb)
    }

    /// The lease `LS:NAME` of this client (or of `pid` for privileged clients).
    fn own_lease(
        &mut self,
        k: ClientKey,
        resource: &str,
        pid: Option<i32>,
    ) -> Result<usize, Reply> {
        let (pid, on_behalf) = self.privileged_pid(k, pid)?;
        let Some((ls, name)) = resource.split_once(':') else {
            return Err(err(
                ErrorCode::BadRequest,
                format!("{resource:?}: expected LOCKSPACE:RESOURCE"),
            ));
        };
        let name = Name::new(name)
            .map_err(|e| err(ErrorCode::BadRequest, format!("{resource:?}: {e}")))?;
        self.reg
            .iter()
            .position(|l| {
                l.space == ls
                    && l.resource == name
                    && if on_behalf {
                        l.pid == pid
                    } else {
                        l.owner == Owner::Conn(k)
                    }
            })
            .ok_or_else(|| {
                err(
                    ErrorCode::NotFound,
                    format!("{resource} is not held by this client"),
                )
            })
    }

    fn convert(
        &mut self,
        k: ClientKey,
        resource: &str,
        shared: bool,
        pid: Option<i32>,
        no_wait: bool,
    ) -> Option<Reply> {
        let i = match self.own_lease(k, resource, pid) {
            Ok(i) => i,
            Err(r) => return Some(r),
        };
        let l = &self.reg[i];
        if l.held.acquired.shared == shared {
            return Some(err(
                ErrorCode::Exists,
                format!("{resource} is already held in that mode"),
            ));
        }
        if l.converting {
            return Some(err(
                ErrorCode::Busy,
                format!("{resource} is being converted"),
            ));
        }
        let key = l.key();
        if let Err(r) = self.reg.admit_convert(&key, shared) {
            return Some(refusal_reply(&key, r));
        }
        let l = &self.reg[i];
        let Some(si) = self.space_index(&l.space) else {
            return Some(err(ErrorCode::NotFound, "lockspace gone"));
        };
        let (space, res, held) = (l.space.clone(), l.resource, l.held.clone());
        let now = self.clock.now();
        let started = if shared {
            self.set
                .start_convert_to_shared(self.spaces[si].id, held, now)
        } else {
            self.set
                .start_convert_to_exclusive(self.spaces[si].id, held, no_wait, now)
        };
        match started {
            Ok(id) => {
                self.reg[i].converting = true;
                self.reg.begin(key, InFlight::Convert);
                self.pending.insert(
                    id,
                    Pending::Convert {
                        client: k,
                        space,
                        resource: res,
                    },
                );
                None
            }
            Err(e) => Some(op_error_reply(res, &e)),
        }
    }

    fn lvb_get(&mut self, k: ClientKey, resource: &str, pid: Option<i32>) -> Reply {
        let i = match self.own_lease(k, resource, pid) {
            Ok(i) => i,
            Err(r) => return r,
        };
        match &self.reg[i].held.acquired.lvb {
            Some(v) => Reply::Ok(json!({"resource": resource, "lvb_hex": hex(v)})),
            None => err(
                ErrorCode::BadRequest,
                format!("{resource} was acquired without reading its LVB (acquire with lvb)"),
            ),
        }
    }

    fn lvb_set(&mut self, k: ClientKey, resource: &str, value: &str, pid: Option<i32>) -> Reply {
        let i = match self.own_lease(k, resource, pid) {
            Ok(i) => i,
            Err(r) => return r,
        };
        let v = match unhex(value) {
            Ok(v) => v,
            Err(e) => return err(ErrorCode::BadRequest, format!("lvb: {e}")),
        };
        let l = &self.reg[i];
        let ss = l.held.target.geometry.sector_size_bytes() as usize;
        if v.len() > ss {
            return err(
                ErrorCode::BadRequest,
                format!("an LVB is at most one sector ({ss} bytes), not {}", v.len()),
            );
        }
        if let Err(e) = l.held.target.geometry.lvb_offset() {
            return err(
                ErrorCode::Failed,
                format!("{resource}: no LVB in this geometry: {e}"),
            );
        }
        self.reg[i].lvb_to_write = Some(v);
        Reply::Ok(json!({"resource": resource, "written_at_release": true}))
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
                self.set
                    .hosts(self.spaces[i].id, now)
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
                        Reply::Ok(json!({"resource": spec.name.escaped(), "disks": disks}))
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

    /// Reads the request record of every lease held in `space` (only `resource`, if given)
    /// on helper threads, and acts on newer requests ([`Server::examined`]).
    fn examine(&mut self, space: &str, resource: Option<Name>) {
        let mut targets: Vec<(Name, String, u64)> = Vec::new();
        for l in self.reg.iter().filter(|l| {
            l.space == space
                && l.owner != Owner::Orphan
                && l.joining.is_none()
                && resource.is_none_or(|r| r == l.resource)
        }) {
            // One read per lease: its local holders share it.
            if !targets.iter().any(|t| t.0 == l.resource) {
                targets.push((l.resource, l.location.0.clone(), l.location.1));
            }
        }
        for (resource, path, offset) in targets {
            let space = space.to_owned();
            // Examinations are answered to nobody: a placeholder key.
            let k = ClientKey {
                idx: usize::MAX,
                serial: 0,
            };
            self.spawn_job(k, move || {
                let record = read_request_record(&path, offset).ok();
                JobReply::Examined {
                    space,
                    resource,
                    record,
                }
            });
        }
    }

    /// Acts on a request record newer than the lease we hold: FORCE → SIGKILL the holder
    /// (SIGTERM if SIGKILL is restricted), GRACEFUL → its kill path, else SIGTERM (SIGKILL if
    /// SIGTERM is restricted). The lease goes when the holder exits.
    fn examined(
        &mut self,
        space: &str,
        resource: Name,
        record: Option<tenure_format::paxos::RequestRecord>,
    ) {
        let Some(rec) = record else { return };
        // Every local holder of the lease (several share a shared hold); not joiners, which
        // hold nothing yet, nor orphans, which have no process.
        let holders: Vec<(u64, i32, Owner)> = self
            .reg
            .iter()
            .filter(|l| l.space == space && l.resource == resource)
            .filter(|l| l.joining.is_none() && l.owner != Owner::Orphan)
            .map(|l| (l.held.acquired.lver, l.pid, l.owner))
            .collect();
        for (lver, pid, owner) in holders {
            if rec.force_mode == 0 || rec.lver <= lver {
                continue;
            }
            self.signal_requested(space, resource, &rec, pid, owner);
        }
    }

    /// Signals one holder of a requested lease as the request's force mode says.
    fn signal_requested(
        &mut self,
        space: &str,
        resource: Name,
        rec: &tenure_format::paxos::RequestRecord,
        pid: i32,
        owner: Owner,
    ) {
        let (kill_path, restrict) = match owner {
            Owner::Conn(c) => self
                .conn(c)
                .map(|c| (c.kill_path.clone(), c.restrict))
                .unwrap_or((None, 0)),
            _ => (None, 0),
        };
        use crate::sanlock_wire::flags::{RESTRICT_SIGKILL, RESTRICT_SIGTERM};
        let sig = match (rec.force_mode, kill_path) {
            (1, _) if restrict & RESTRICT_SIGKILL != 0 => Some(rustix::process::Signal::TERM),
            (1, _) => Some(rustix::process::Signal::KILL),
            (_, Some((path, args))) => {
                tracing::warn!(lockspace = %space, resource = %resource.escaped(), pid, kill_path = %path, "graceful request: running the kill path");
                let _ = std::process::Command::new(&path)
                    .args(&args)
                    .stdin(std::process::Stdio::null())
                    .spawn();
                None
            }
            _ if restrict & RESTRICT_SIGTERM != 0 => Some(rustix::process::Signal::KILL),
            _ => Some(rustix::process::Signal::TERM),
        };
        if let Some(sig) = sig {
            tracing::warn!(lockspace = %space, resource = %resource.escaped(), pid, request_lver = rec.lver, force_mode = rec.force_mode, "another host requested this lease: signalling its holder");
            if let Some(p) = rustix::process::Pid::from_raw(pid) {
                if let Ok(fd) = rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty())
                {
                    let _ = rustix::process::pidfd_send_signal(&fd, sig);
                }
            }
        }
    }

    /// Starts a request for a resource held elsewhere: writes its request record (helper
    /// thread), then sets the owner's bit in our bitmap of that lockspace for 6T.
    fn start_request(
        &mut self,
        k: ClientKey,
        spec: &str,
        lver: Option<u64>,
        force_mode: u32,
        sanlock: bool,
    ) -> Option<Reply> {
        let spec = match ResourceSpec::parse(spec) {
            Ok(s) if s.disks.len() == 1 => s,
            Ok(_) => return Some(err(ErrorCode::BadRequest, "one PATH:OFFSET")),
            Err(e) => return Some(err(ErrorCode::BadRequest, format!("resource spec: {e}"))),
        };
        let space = spec.lockspace.escaped();
        let joined = self.space_index(&space).is_some_and(|i| {
            matches!(
                self.set.state(self.spaces[i].id),
                Some(LockspaceState::Joined { .. })
            )
        });
        if !joined {
            return Some(err(
                ErrorCode::NotJoined,
                format!("lockspace {space} is not joined"),
            ));
        }
        let (path, offset) = (spec.disks[0].path.clone(), spec.disks[0].offset);
        let started = self.spawn_job(k, move || JobReply::Requested {
            space,
            result: write_request_record(&path, offset, lver, force_mode),
            sanlock,
        });
        if !started {
            return Some(err(ErrorCode::Full, "too many direct I/Os in progress"));
        }
        None
    }

    fn requested(
        &mut self,
        k: ClientKey,
        space: &str,
        result: Result<Option<u64>, i32>,
        sanlock: bool,
    ) {
        if let Ok(Some(owner)) = result {
            if let Some(i) = self.space_index(space) {
                let id = self.spaces[i].id;
                let now = self.clock.now();
                // PROTOCOL "Requests": the owner's bit stays set for 6T.
                let t = self.set.config(id).map_or(self.cfg.io_timeout_s, |c| {
                    u64::from(c.timeouts.io_timeout_s)
                });
                let until = now.saturating_add(Duration::from_secs(6 * t));
                let _ = self.set.set_bitmap_bit_until(id, owner, until);
                tracing::info!(lockspace = %space, owner, "request written; owner's bit set for 6T");
            }
        }
        if sanlock {
            let r = match result {
                Ok(_) => 0,
                Err(e) => e,
            };
            self.sanlock_job_done(k, r, 0, &[]);
        } else {
            let r = match result {
                Ok(owner) => Reply::Ok(json!({"owner": owner, "written": owner.is_some()})),
                Err(e) => err(
                    ErrorCode::Failed,
                    format!("request failed (sanlock result {e})"),
                ),
            };
            self.reply(k, r);
        }
    }

    fn inquire(&mut self, k: ClientKey, pid: Option<i32>, target: Option<ClientKey>) -> Reply {
        let (pid, on_behalf) = match self.resolve(k, pid, target) {
            Ok(x) => x,
            Err(r) => return r,
        };
        let me = target.unwrap_or(k);
        let mine: Vec<&Lease> = self
            .reg
            .iter()
            .filter(|l| l.joining.is_none())
            .filter(|l| {
                if on_behalf {
                    l.pid == pid
                } else {
                    l.owner == Owner::Conn(me)
                }
            })
            .collect();
        let state = mine
            .iter()
            .map(|l| l.state_string())
            .collect::<Vec<_>>()
            .join(" ");
        Reply::Ok(json!({
            "leases": mine.iter().map(|l| l.json()).collect::<Vec<_>>(),
            "state": state,
        }))
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
    use tenure_format::paxos::RequestRecord;
    let mut d = DirectDisk::open(Path::new(path), Access::ReadWrite, BackendKind::Sync)
        .map_err(|_| rv::ENODEV)?;
    let leader = d
        .read(offset, 4096, LeaderRecord::decode)
        .map_err(|_| rv::SANLK_AIO_TIMEOUT)?
        .map_err(|_| rv::SANLK_LEADER_MAGIC)?;
    if leader.timestamp == 0 && force_mode != 0 {
        return Ok(None);
    }
    let lver = lver.unwrap_or(leader.lver + 1);
    if force_mode != 0 && lver <= leader.lver {
        return Err(-272); // SANLK_REQUEST_OLD
    }
    let ss = leader.sector_size as usize;
    let mut sector = vec![0u8; ss];
    RequestRecord {
        lver,
        force_mode,
        ..RequestRecord::FORMATTED
    }
    .encode_into(&mut sector);
    d.write(offset + ss as u64, &sector)
        .map_err(|_| rv::SANLK_AIO_TIMEOUT)?;
    Ok((force_mode != 0).then_some(leader.owner_id))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Result<Vec<u8>, String> {
    if s.len() % 2 != 0 || s.len() > 8192 {
        return Err("even number of hex digits, at most 8192".into());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| e.to_string()))
        .collect()
}

fn bind(path: &Path, group: Option<&str>, mode_alone: u32) -> Result<UnixListener, ServerError> {
    if let Ok(s) = UnixStream::connect(path) {
        drop(s);
        return Err(ServerError::Config(format!(
            "{} is in use: another tenured is running",
            path.display()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn reply_of(e: OpError) -> ErrorReply {
        match op_error_reply(Name::new("r").expect("name"), &e) {
            Reply::Error(r) => r,
            Reply::Ok(v) => panic!("not an error: {v}"),
        }
    }

    #[test]
    fn every_failure_is_reported_with_its_fault_and_a_stall_is_not_damage() {
        let r = reply_of(OpError::Paxos(PaxosError::Stalled("acquire")));
        assert_eq!(r.code, ErrorCode::Failed);
        assert_eq!(r.details.as_ref().expect("details")["fault"], "internal");
        let r = reply_of(OpError::Paxos(PaxosError::Corrupt("bad magic".into())));
        assert_eq!(r.code, ErrorCode::Corrupt);
        assert_eq!(r.details.as_ref().expect("details")["fault"], "damaged");
        let r = reply_of(OpError::Paxos(PaxosError::OwnerAlive {
            host_id: 2,
            generation: 7,
        }));
        assert_eq!(r.code, ErrorCode::OwnerAlive);
        let d = r.details.expect("details");
        assert_eq!(
            (d["host_id"].clone(), d["fault"].clone()),
            (json!(2), json!("contention"))
        );
        let r = reply_of(OpError::LockspaceLost);
        assert_eq!(r.code, ErrorCode::LockspaceLost);
        assert_eq!(r.details.expect("details")["fault"], "storage");
        let r = reply_of(OpError::Paxos(PaxosError::HostIdAboveNumHosts {
            host_id: 9,
            num_hosts: 8,
        }));
        assert_eq!(r.details.expect("details")["fault"], "configuration");
    }
}
