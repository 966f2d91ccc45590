//! Metrics in Prometheus' text exposition format (version 0.0.4), served by `tenure metrics`
//! and, when `[metrics] listen` is set, on a local HTTP endpoint (docs/operations.md
//! "Metrics" names every metric and label).
//!
//! Counters and histograms are updated where things happen: renewals in the host core, I/O
//! completions in [`MeteredBackend`] around the engine's backend, operations where the front
//! ends answer. Gauges (lockspace and host states, leases, clients, the watchdog) are taken
//! from the daemon's state at each rendering, on the reactor thread, so a scrape sees one
//! consistent moment. The HTTP thread never touches that state: it asks the reactor for the
//! text and waits at most [`SCRAPE_WAIT`] (a reactor that does not answer is itself worth
//! seeing: the scrape gets 503).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::AtomicU64;
use std::sync::mpsc::{Sender, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::eventfd::EventFd;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tenure_core::clock::Time;
use tenure_core::delta::DeltaError;
use tenure_core::dev::Device;
use tenure_core::io::{
    Completion, DiskId, DiskInfo, IoBackend, IoError, IoId, IoKind, IoOutcome, IoRequest,
    SubmitError,
};

/// Content type of the exposition.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// How long the HTTP thread waits for the reactor's rendering.
pub const SCRAPE_WAIT: Duration = Duration::from_secs(5);

/// Connections of the HTTP endpoint served at once (more get 503).
pub const CONNECTIONS_MAX: usize = 4;

/// Largest HTTP request head accepted.
pub const REQUEST_MAX_BYTES: usize = 8 * 1024;

/// Buckets of latency histograms: 0.5 ms doubling to 16.4 s (renewals and I/O) or to 65.5 s
/// (operations, which may wait for other hosts).
#[derive(Clone, Copy, Debug)]
pub struct Buckets(u16);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(0.0005, 2.0, self.0))
    }
}

/// `lockspace`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SpaceLabels {
    /// Lockspace name.
    pub lockspace: String,
}

/// `lockspace`, `cause`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// Lockspace name.
    pub lockspace: String,
    /// [`failure_cause`].
    pub cause: &'static str,
}

/// `lockspace`, `state`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// Lockspace name.
    pub lockspace: String,
    /// A state name.
    pub state: &'static str,
}

/// `lockspace`, `mode`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LeaseLabels {
    /// Lockspace name.
    pub lockspace: String,
    /// "exclusive" or "shared".
    pub mode: &'static str,
}

/// `protocol`, `kind`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    /// "native" or "sanlock".
    pub protocol: &'static str,
    /// The request's name.
    pub kind: &'static str,
}

/// `protocol`, `kind`, `result`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpResultLabels {
    /// "native" or "sanlock".
    pub protocol: &'static str,
    /// The request's name.
    pub kind: &'static str,
    /// "ok", or the error (the native error code, or the sanlock reply's errno name).
    pub result: String,
}

/// `backend`, `op`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IoLabels {
    /// "io_uring", "sync" or "sim".
    pub backend: &'static str,
    /// "read", "write", or "write_read" (a write and the read it gates, as one).
    pub op: &'static str,
}

/// `backend`, `op`, `result`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IoResultLabels {
    /// "io_uring", "sync" or "sim".
    pub backend: &'static str,
    /// "read", "write" or "write_read".
    pub op: &'static str,
    /// "done", "failed", "short", "timed_out" or "canceled".
    pub result: &'static str,
}

/// `protocol`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabels {
    /// "native" or "sanlock".
    pub protocol: &'static str,
}

/// `version`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    /// tenured's version.
    pub version: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Every metric tenured exports (clones share the values).
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Renewal latency (area read + own slot write) per lockspace.
    pub renewal_seconds: Family<SpaceLabels, Histogram, Buckets>,
    /// Failed renewal attempts per lockspace and cause.
    pub renewal_failures: Family<FailureLabels, Counter>,
    /// Requests answered, by protocol, kind and result.
    pub operations: Family<OpResultLabels, Counter>,
    /// Time from a request's arrival to its answer.
    pub operation_seconds: Family<OpLabels, Histogram, Buckets>,
    /// Latency of I/Os that completed.
    pub io_seconds: Family<IoLabels, Histogram, Buckets>,
    /// I/Os ended, by result (timeouts are `result="timed_out"`).
    pub io_completions: Family<IoResultLabels, Counter>,
    /// Lockspace joins started again automatically.
    pub rejoin_attempts: Family<SpaceLabels, Counter>,
    // Gauges, set at each rendering.
    build_info: Family<BuildLabels, Gauge>,
    uptime_seconds: FloatGauge,
    lockspace_state: Family<StateLabels, Gauge>,
    renewal_headroom: Family<SpaceLabels, FloatGauge>,
    seconds_since_renewal: Family<SpaceLabels, FloatGauge>,
    hosts: Family<StateLabels, Gauge>,
    leases: Family<LeaseLabels, Gauge>,
    orphans: Family<SpaceLabels, Gauge>,
    clients: Family<ProtocolLabels, Gauge>,
    io_in_flight: Gauge,
    ops_in_flight: Gauge,
    watchdog_armed: Gauge,
    watchdog_fed_age: FloatGauge,
    watchdog_withheld: Gauge,
    watchdog_fire_timeout: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// A lockspace as one rendering sees it.
#[derive(Clone, Debug)]
pub struct SpaceSnapshot {
    /// Name.
    pub name: String,
    /// "idle", "joining", "joined", "join_failed", "lost" or "left".
    pub state: &'static str,
    /// Seconds until the renewal deadline (negative once passed); None before the join.
    pub headroom_s: Option<f64>,
    /// Seconds since the last successful renewal (the join's write counts).
    pub since_renewal_s: Option<f64>,
    /// Host slots by state ("free", "unknown", "live", "fail", "dead").
    pub hosts: Vec<(&'static str, i64)>,
    /// Leases held by clients: exclusive, shared.
    pub leases: (i64, i64),
    /// Orphans.
    pub orphans: i64,
}

/// The daemon's state as one rendering sees it (gauges).
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Seconds since start.
    pub uptime_s: f64,
    /// Lockspaces.
    pub spaces: Vec<SpaceSnapshot>,
    /// Connections: native, sanlock.
    pub clients: (i64, i64),
    /// I/Os the engine has in flight.
    pub io_in_flight: i64,
    /// Lease operations in flight.
    pub ops_in_flight: i64,
    /// Watchdog armed.
    pub watchdog_armed: bool,
    /// Seconds since the last keepalive.
    pub watchdog_fed_age_s: Option<f64>,
    /// The last supervisor pass withheld the keepalive.
    pub watchdog_withheld: bool,
    /// W.
    pub watchdog_fire_timeout_s: i64,
}

impl Metrics {
    /// Every family, registered under the `tenure_` prefix.
    pub fn new() -> Self {
        let m = Metrics {
            registry: Arc::new(Registry::default()),
            renewal_seconds: Family::new_with_constructor(Buckets(16)),
            renewal_failures: Family::default(),
            operations: Family::default(),
            operation_seconds: Family::new_with_constructor(Buckets(18)),
            io_seconds: Family::new_with_constructor(Buckets(16)),
            io_completions: Family::default(),
            rejoin_attempts: Family::default(),
            build_info: Family::default(),
            uptime_seconds: FloatGauge::default(),
            lockspace_state: Family::default(),
            renewal_headroom: Family::default(),
            seconds_since_renewal: Family::default(),
            hosts: Family::default(),
            leases: Family::default(),
            orphans: Family::default(),
            clients: Family::default(),
            io_in_flight: Gauge::default(),
            ops_in_flight: Gauge::default(),
            watchdog_armed: Gauge::default(),
            watchdog_fed_age: FloatGauge::default(),
            watchdog_withheld: Gauge::default(),
            watchdog_fire_timeout: Gauge::default(),
        };
        let mut r = Registry::with_prefix("tenure");
        r.register(
            "build_info",
            "tenured's version (value 1)",
            m.build_info.clone(),
        );
        r.register(
            "uptime_seconds",
            "Seconds since this tenured started",
            m.uptime_seconds.clone(),
        );
        r.register(
            "renewal_duration_seconds",
            "Delta lease renewal latency: the area read plus this host's slot write",
            m.renewal_seconds.clone(),
        );
        r.register(
            "renewal_failures",
            "Failed renewal attempts by cause (io_failed, io_short, io_timed_out, io_canceled, corrupt, foreign, host_id_busy, deadline_passed, misuse)",
            m.renewal_failures.clone(),
        );
        r.register(
            "lockspace_renewal_headroom_seconds",
            "Seconds until the renewal deadline (8T after the last successful renewal); at 0 the lockspace is lost",
            m.renewal_headroom.clone(),
        );
        r.register(
            "lockspace_seconds_since_renewal",
            "Seconds since the last successful renewal",
            m.seconds_since_renewal.clone(),
        );
        r.register(
            "lockspace_state",
            "1 for the state each lockspace is in (idle, joining, joined, join_failed, lost, left)",
            m.lockspace_state.clone(),
        );
        r.register(
            "lockspace_hosts",
            "Host ids of each lockspace by the state this host sees (free, unknown, live, fail, dead)",
            m.hosts.clone(),
        );
        r.register(
            "lockspace_rejoin_attempts",
            "Automatic joins started again for configured lockspaces after a loss or a failed join",
            m.rejoin_attempts.clone(),
        );
        r.register(
            "operations",
            "Requests answered, by protocol, kind and result",
            m.operations.clone(),
        );
        r.register(
            "operation_duration_seconds",
            "Time from a request's arrival to its answer",
            m.operation_seconds.clone(),
        );
        r.register(
            "operations_in_flight",
            "Lease operations (acquire, release, convert) running on storage",
            m.ops_in_flight.clone(),
        );
        r.register(
            "io_duration_seconds",
            "Latency of completed I/Os of the lease engine by backend and op",
            m.io_seconds.clone(),
        );
        r.register(
            "io_completions",
            "I/Os of the lease engine ended, by result (done, failed, short, timed_out, canceled)",
            m.io_completions.clone(),
        );
        r.register(
            "io_in_flight",
            "I/Os of the lease engine queued, submitted, or timed out and not yet reaped",
            m.io_in_flight.clone(),
        );
        r.register(
            "leases_held",
            "Leases held by this host's clients, by mode",
            m.leases.clone(),
        );
        r.register(
            "orphan_leases",
            "Leases held on disk with no holder (persistent orphans, failed releases)",
            m.orphans.clone(),
        );
        r.register(
            "clients",
            "Connected clients by protocol",
            m.clients.clone(),
        );
        r.register(
            "watchdog_armed",
            "1 while the watchdog is armed",
            m.watchdog_armed.clone(),
        );
        r.register(
            "watchdog_fed_age_seconds",
            "Seconds since the last watchdog keepalive (absent until the first)",
            m.watchdog_fed_age.clone(),
        );
        r.register(
            "watchdog_withheld",
            "1 when the last supervisor pass withheld the keepalive (a lockspace past its deadline with live holders)",
            m.watchdog_withheld.clone(),
        );
        r.register(
            "watchdog_fire_timeout_seconds",
            "W: seconds from the last keepalive until the watchdog fires",
            m.watchdog_fire_timeout.clone(),
        );
        Metrics {
            registry: Arc::new(r),
            ..m
        }
    }

    /// A renewal succeeded.
    pub fn renewed(&self, lockspace: &str, latency: Duration) {
        self.renewal_seconds
            .get_or_create(&SpaceLabels {
                lockspace: lockspace.to_owned(),
            })
            .observe(latency.as_secs_f64());
    }

    /// A renewal failed.
    pub fn renewal_failed(&self, lockspace: &str, error: &DeltaError) {
        self.renewal_failures
            .get_or_create(&FailureLabels {
                lockspace: lockspace.to_owned(),
                cause: failure_cause(error),
            })
            .inc();
    }

    /// A request was answered.
    pub fn answered(
        &self,
        protocol: &'static str,
        kind: &'static str,
        result: String,
        took: Duration,
    ) {
        self.operations
            .get_or_create(&OpResultLabels {
                protocol,
                kind,
                result,
            })
            .inc();
        self.operation_seconds
            .get_or_create(&OpLabels { protocol, kind })
            .observe(took.as_secs_f64());
    }

    /// The exposition, with the gauges taken from `snap`.
    pub fn render(&self, snap: &Snapshot) -> String {
        self.build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        self.uptime_seconds.set(snap.uptime_s);
        for f in [&self.renewal_headroom, &self.seconds_since_renewal] {
            f.clear();
        }
        self.lockspace_state.clear();
        self.hosts.clear();
        self.leases.clear();
        self.orphans.clear();
        for s in &snap.spaces {
            let l = SpaceLabels {
                lockspace: s.name.clone(),
            };
            self.lockspace_state
                .get_or_create(&StateLabels {
                    lockspace: s.name.clone(),
                    state: s.state,
                })
                .set(1);
            if let Some(h) = s.headroom_s {
                self.renewal_headroom.get_or_create(&l).set(h);
            }
            if let Some(a) = s.since_renewal_s {
                self.seconds_since_renewal.get_or_create(&l).set(a);
            }
            for &(state, n) in &s.hosts {
                self.hosts
                    .get_or_create(&StateLabels {
                        lockspace: s.name.clone(),
                        state,
                    })
                    .set(n);
            }
            for (mode, n) in [("exclusive", s.leases.0), ("shared", s.leases.1)] {
                self.leases
                    .get_or_create(&LeaseLabels {
                        lockspace: s.name.clone(),
                        mode,
                    })
                    .set(n);
            }
            self.orphans.get_or_create(&l).set(s.orphans);
        }
        self.clients.clear();
        for (protocol, n) in [("native", snap.clients.0), ("sanlock", snap.clients.1)] {
            self.clients
                .get_or_create(&ProtocolLabels { protocol })
                .set(n);
        }
        self.io_in_flight.set(snap.io_in_flight);
        self.ops_in_flight.set(snap.ops_in_flight);
        self.watchdog_armed.set(i64::from(snap.watchdog_armed));
        // Absent until the first keepalive: NaN would read as a value to alerting rules.
        self.watchdog_fed_age
            .set(snap.watchdog_fed_age_s.unwrap_or(f64::NAN));
        self.watchdog_withheld
            .set(i64::from(snap.watchdog_withheld));
        self.watchdog_fire_timeout.set(snap.watchdog_fire_timeout_s);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        if snap.watchdog_fed_age_s.is_none() {
            out = out
                .lines()
                .filter(|l| !l.starts_with("tenure_watchdog_fed_age_seconds "))
                .map(|l| format!("{l}\n"))
                .collect();
        }
        out
    }
}

/// A renewal failure's `cause` label.
pub fn failure_cause(e: &DeltaError) -> &'static str {
    match e {
        DeltaError::Io { outcome, .. } => match outcome {
            IoOutcome::Failed { .. } => "io_failed",
            IoOutcome::Short { .. } => "io_short",
            IoOutcome::TimedOut => "io_timed_out",
            IoOutcome::Canceled => "io_canceled",
            IoOutcome::Done => "io_done",
        },
        DeltaError::Corrupt(_) => "corrupt",
        DeltaError::Foreign { .. } => "foreign",
        DeltaError::HostIdBusy { .. } => "host_id_busy",
        DeltaError::RenewalDeadlinePassed(_) => "deadline_passed",
        DeltaError::Misuse(_) => "misuse",
    }
}

fn outcome_label(o: IoOutcome) -> &'static str {
    match o {
        IoOutcome::Done => "done",
        IoOutcome::Failed { .. } => "failed",
        IoOutcome::Short { .. } => "short",
        IoOutcome::TimedOut => "timed_out",
        IoOutcome::Canceled => "canceled",
    }
}

/// One I/O's accounting: its op label and when its clock started.
#[derive(Clone, Copy, Debug)]
struct Started {
    op: usize,
    at: Instant,
}

const IO_OPS: [&str; 3] = ["read", "write", "write_read"];
const IO_RESULTS: [IoOutcome; 5] = [
    IoOutcome::Done,
    IoOutcome::Failed { errno: 0 },
    IoOutcome::Short { transferred: 0 },
    IoOutcome::TimedOut,
    IoOutcome::Canceled,
];

/// The engine's backend, with every I/O's latency and result counted. The histogram and
/// counter handles are taken once, so an I/O costs a map insert and a lookup.
#[derive(Debug)]
pub struct MeteredBackend {
    inner: Box<dyn IoBackend + Send>,
    started: HashMap<IoId, Started>,
    seconds: Vec<Histogram>,
    results: Vec<Vec<Counter>>,
}

impl MeteredBackend {
    /// Wraps `inner`, counting into `metrics`.
    pub fn new(inner: Box<dyn IoBackend + Send>, metrics: &Metrics) -> Self {
        let backend = inner.name();
        let seconds = IO_OPS
            .iter()
            .map(|&op| {
                metrics
                    .io_seconds
                    .get_or_create_owned(&IoLabels { backend, op })
            })
            .collect();
        let results = IO_OPS
            .iter()
            .map(|&op| {
                IO_RESULTS
                    .iter()
                    .map(|&o| {
                        metrics.io_completions.get_or_create_owned(&IoResultLabels {
                            backend,
                            op,
                            result: outcome_label(o),
                        })
                    })
                    .collect()
            })
            .collect();
        MeteredBackend {
            inner,
            started: HashMap::with_capacity(256),
            seconds,
            results,
        }
    }

    fn start(&mut self, id: IoId, op: usize) {
        self.started.insert(
            id,
            Started {
                op,
                at: Instant::now(),
            },
        );
    }
}

fn result_index(o: IoOutcome) -> usize {
    match o {
        IoOutcome::Done => 0,
        IoOutcome::Failed { .. } => 1,
        IoOutcome::Short { .. } => 2,
        IoOutcome::TimedOut => 3,
        IoOutcome::Canceled => 4,
    }
}

impl IoBackend for MeteredBackend {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn disk(&self, disk: DiskId) -> Option<&DiskInfo> {
        self.inner.disk(disk)
    }
    fn start_read(&mut self, req: IoRequest) -> Result<IoId, SubmitError> {
        let id = self.inner.start_read(req)?;
        self.start(id, 0);
        Ok(id)
    }
    fn start_write(&mut self, req: IoRequest, data: &[u8]) -> Result<IoId, SubmitError> {
        let id = self.inner.start_write(req, data)?;
        self.start(id, 1);
        Ok(id)
    }
    fn start_chain(
        &mut self,
        write: IoRequest,
        data: &[u8],
        read: IoRequest,
    ) -> Result<(IoId, IoId), SubmitError> {
        let (w, r) = self.inner.start_chain(write, data, read)?;
        self.start(w, 1);
        // The read starts when the write ends: its latency is the pair's.
        self.start(r, 2);
        Ok((w, r))
    }
    fn start_pair(
        &mut self,
        write: IoRequest,
        data: &[u8],
        read: IoRequest,
    ) -> Result<(IoId, IoId), SubmitError> {
        let (w, r) = self.inner.start_pair(write, data, read)?;
        self.start(w, 1);
        self.start(r, 0);
        Ok((w, r))
    }
    fn flush(&mut self) -> Result<(), IoError> {
        self.inner.flush()
    }
    fn poll(&mut self, now: Time, out: &mut Vec<Completion>) -> Result<(), IoError> {
        let from = out.len();
        let r = self.inner.poll(now, out);
        let at = Instant::now();
        for c in &out[from..] {
            let Some(s) = self.started.remove(&c.id) else {
                continue;
            };
            let op = match (s.op, c.kind) {
                (2, _) => 2,
                (_, IoKind::Read) => 0,
                (_, IoKind::Write) => 1,
            };
            self.results[op][result_index(c.outcome)].inc();
            if c.outcome == IoOutcome::Done {
                self.seconds[op].observe(at.duration_since(s.at).as_secs_f64());
            }
        }
        r
    }
    fn wait(&mut self, now: Time, until: Time) -> Result<(), IoError> {
        self.inner.wait(now, until)
    }
    fn read_data(&self, id: IoId) -> Option<&[u8]> {
        self.inner.read_data(id)
    }
    fn release(&mut self, id: IoId) {
        self.inner.release(id);
    }
    fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }
    fn next_deadline(&self) -> Option<Time> {
        self.inner.next_deadline()
    }
    fn add_disk(&mut self, device: Device) -> Result<DiskId, IoError> {
        self.inner.add_disk(device)
    }
    fn notify_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.inner.notify_fd()
    }
}

/// A scrape waiting for the reactor's rendering.
pub type ScrapeRequest = SyncSender<String>;

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// Binding the address failed for good (not "in use").
    #[error("metrics endpoint {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The thread could not be started.
    #[error("metrics endpoint thread: {0}")]
    Thread(std::io::Error),
}

/// Starts the HTTP endpoint on `addr`: `GET /metrics` asks the reactor (through `tx` and a
/// write to `wake`) for the text. An address in use is retried every 250 ms, logged each
/// 10 s (a planned upgrade's successor binds once its predecessor exited).
pub fn serve(
    addr: SocketAddr,
    tx: Sender<ScrapeRequest>,
    wake: Arc<EventFd>,
) -> Result<(), EndpointError> {
    let first = match TcpListener::bind(addr) {
        Ok(l) => Some(l),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => None,
        Err(source) => return Err(EndpointError::Bind { addr, source }),
    };
    std::thread::Builder::new()
        .name("tenured-metrics".into())
        .spawn(move || {
            let listener = match first {
                Some(l) => l,
                None => match bind_retrying(addr) {
                    Some(l) => l,
                    None => return,
                },
            };
            tracing::info!(%addr, "metrics endpoint listening");
            let busy = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            for conn in listener.incoming() {
                match conn {
                    Ok(mut s) => {
                        // One thread per connection, a few at most: a client that says
                        // nothing holds only its own thread until its read times out.
                        use std::sync::atomic::Ordering;
                        if busy.fetch_add(1, Ordering::SeqCst) >= CONNECTIONS_MAX {
                            busy.fetch_sub(1, Ordering::SeqCst);
                            let _ = respond(&mut s, "503 Service Unavailable", "text/plain", b"too many metrics connections\n", false);
                            continue;
                        }
                        let (tx, wake, busy2) = (tx.clone(), Arc::clone(&wake), Arc::clone(&busy));
                        let spawned = std::thread::Builder::new()
                            .name("tenured-scrape".into())
                            .spawn(move || {
                                if let Err(e) = answer(s, &tx, &wake) {
                                    tracing::debug!(error = %e, "metrics request");
                                }
                                busy2.fetch_sub(1, Ordering::SeqCst);
                            });
                        if let Err(e) = spawned {
                            busy.fetch_sub(1, Ordering::SeqCst);
                            tracing::warn!(error = %e, "metrics endpoint: no thread for a connection");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics endpoint accept");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })
        .map_err(EndpointError::Thread)?;
    Ok(())
}

fn bind_retrying(addr: SocketAddr) -> Option<TcpListener> {
    let mut last_log: Option<Instant> = None;
    loop {
        match TcpListener::bind(addr) {
            Ok(l) => return Some(l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    tracing::warn!(%addr, "metrics endpoint address in use: retrying");
                    last_log = Some(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(e) => {
                tracing::error!(%addr, error = %e, "metrics endpoint cannot bind: no metrics over HTTP");
                return None;
            }
        }
    }
}

/// What an HTTP request head asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum HttpAsk {
    /// GET (or HEAD) /metrics.
    Metrics {
        /// HEAD: no body.
        head: bool,
    },
    /// Another path: 404.
    NotFound,
    /// Another method: 405.
    BadMethod,
    /// Not HTTP/1.x: 400.
    Malformed,
}

/// Reads the request line of a head (the bytes up to the blank line).
pub fn parse_head(head: &[u8]) -> HttpAsk {
    let Ok(text) = std::str::from_utf8(head) else {
        return HttpAsk::Malformed;
    };
    let line = text.split("\r\n").next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return HttpAsk::Malformed;
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return HttpAsk::Malformed;
    }
    let head = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return HttpAsk::BadMethod,
    };
    let path = target.split('?').next().unwrap_or("");
    if path == "/metrics" {
        HttpAsk::Metrics { head }
    } else {
        HttpAsk::NotFound
    }
}

fn answer(mut s: TcpStream, tx: &Sender<ScrapeRequest>, wake: &EventFd) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let ask = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break parse_head(&buf[..end]);
        }
        if buf.len() > REQUEST_MAX_BYTES {
            return respond(
                &mut s,
                "431 Request Header Fields Too Large",
                "text/plain",
                b"request head too large\n",
                false,
            );
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    match ask {
        HttpAsk::Metrics { head } => {
            let (reply_tx, reply_rx) = std::sync::mpsc::sync_channel(1);
            let text = tx.send(reply_tx).ok().and_then(|()| {
                let _ = wake.write(1);
                reply_rx.recv_timeout(SCRAPE_WAIT).ok()
            });
            match text {
                Some(t) => respond(&mut s, "200 OK", CONTENT_TYPE, t.as_bytes(), head),
                None => respond(
                    &mut s,
                    "503 Service Unavailable",
                    "text/plain",
                    b"tenured did not render its metrics in time (busy, stopping or handing over)\n",
                    head,
                ),
            }
        }
        HttpAsk::NotFound => respond(
            &mut s,
            "404 Not Found",
            "text/plain",
            b"metrics are at /metrics\n",
            false,
        ),
        HttpAsk::BadMethod => respond(
            &mut s,
            "405 Method Not Allowed",
            "text/plain",
            b"GET /metrics\n",
            false,
        ),
        HttpAsk::Malformed => respond(
            &mut s,
            "400 Bad Request",
            "text/plain",
            b"not an HTTP/1 request\n",
            false,
        ),
    }
}

fn respond(
    s: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
    head: bool,
) -> std::io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head {
        out.extend_from_slice(body);
    }
    s.write_all(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_heads() {
        assert_eq!(
            parse_head(b"GET /metrics HTTP/1.1\r\nHost: x"),
            HttpAsk::Metrics { head: false }
        );
        assert_eq!(
            parse_head(b"HEAD /metrics?x=1 HTTP/1.0"),
            HttpAsk::Metrics { head: true }
        );
        assert_eq!(parse_head(b"GET / HTTP/1.1"), HttpAsk::NotFound);
        assert_eq!(parse_head(b"POST /metrics HTTP/1.1"), HttpAsk::BadMethod);
        assert_eq!(parse_head(b"GET /metrics"), HttpAsk::Malformed);
        assert_eq!(parse_head(b"GET metrics HTTP/1.1"), HttpAsk::Malformed);
        assert_eq!(parse_head(b"\xff\xfe"), HttpAsk::Malformed);
        assert_eq!(parse_head(b"GET /metrics SPDY/3"), HttpAsk::Malformed);
    }

    #[test]
    fn render_sets_and_clears_gauges() {
        let m = Metrics::new();
        m.renewed("vms", Duration::from_millis(3));
        m.renewal_failed(
            "vms",
            &DeltaError::Io {
                what: "renewal read",
                outcome: IoOutcome::TimedOut,
            },
        );
        m.answered("native", "acquire", "ok".into(), Duration::from_millis(20));
        let mut snap = Snapshot {
            spaces: vec![SpaceSnapshot {
                name: "vms".into(),
                state: "joined",
                headroom_s: Some(79.5),
                since_renewal_s: Some(0.5),
                hosts: vec![("live", 2), ("free", 1998)],
                leases: (3, 1),
                orphans: 0,
            }],
            watchdog_armed: true,
            watchdog_fed_age_s: None,
            ..Snapshot::default()
        };
        let t = m.render(&snap);
        assert!(
            t.contains("tenure_renewal_duration_seconds_count{lockspace=\"vms\"} 1\n"),
            "{t}"
        );
        assert!(
            t.contains(
                "tenure_renewal_failures_total{lockspace=\"vms\",cause=\"io_timed_out\"} 1\n"
            ),
            "{t}"
        );
        assert!(
            t.contains("tenure_leases_held{lockspace=\"vms\",mode=\"exclusive\"} 3\n"),
            "{t}"
        );
        assert!(
            t.contains("tenure_lockspace_hosts{lockspace=\"vms\",state=\"free\"} 1998\n"),
            "{t}"
        );
        assert!(
            t.contains(
                "tenure_operations_total{protocol=\"native\",kind=\"acquire\",result=\"ok\"} 1\n"
            ),
            "{t}"
        );
        assert!(t.contains("tenure_watchdog_armed 1\n"), "{t}");
        assert!(!t.contains("\ntenure_watchdog_fed_age_seconds "), "{t}");
        // The lockspace goes: its gauges go with it; its counters stay.
        snap.spaces.clear();
        snap.watchdog_fed_age_s = Some(1.5);
        let t = m.render(&snap);
        assert!(!t.contains("tenure_leases_held{"), "{t}");
        assert!(!t.contains("tenure_lockspace_state{"), "{t}");
        assert!(
            t.contains(
                "tenure_renewal_failures_total{lockspace=\"vms\",cause=\"io_timed_out\"} 1\n"
            ),
            "{t}"
        );
        assert!(t.contains("tenure_watchdog_fed_age_seconds 1.5\n"), "{t}");
    }

    #[test]
    fn metered_backend_counts_latency_and_results() {
        use tenure_core::clock::{Clock, SimClock};
        use tenure_core::io::sim::{SimBackend, SimConfig};
        use tenure_core::io::EngineConfig;
        let clock = SimClock::new(Time::ZERO);
        let engine = EngineConfig {
            ring_entries: 8,
            buffer_classes: vec![(4096, 8)],
            sync_workers: 1,
        };
        // Disk 0 answers; disk 1 hangs.
        let mut sim = SimBackend::new(
            &[(4096, 1 << 20), (4096, 1 << 20)],
            &engine,
            SimConfig::healthy(1),
            clock.clone(),
        );
        sim.set_hung(DiskId(1), true);
        let m = Metrics::new();
        let mut b = MeteredBackend::new(Box::new(sim), &m);
        let req = |disk: u16, deadline: Time| IoRequest {
            disk: DiskId(disk),
            offset: 0,
            len: 4096,
            deadline,
        };
        let deadline = Time::ZERO.saturating_add(Duration::from_millis(5));
        b.start_read(req(0, deadline)).unwrap();
        b.start_chain(req(0, deadline), &[7u8; 4096], req(0, deadline))
            .unwrap();
        b.start_read(req(1, deadline)).unwrap();
        b.flush().unwrap();
        let mut out = Vec::new();
        for _ in 0..10 {
            clock.advance(Duration::from_millis(1));
            b.poll(clock.now(), &mut out).unwrap();
        }
        assert_eq!(out.len(), 4, "{out:?}");
        assert!(b.started.is_empty(), "every I/O ended: nothing kept");
        let t = m.render(&Snapshot::default());
        for (op, result, n) in [
            ("read", "done", 1),
            ("write", "done", 1),
            ("write_read", "done", 1),
            ("read", "timed_out", 1),
            ("write", "failed", 0),
        ] {
            let line = format!(
                "tenure_io_completions_total{{backend=\"sim\",op=\"{op}\",result=\"{result}\"}} {n}\n"
            );
            assert!(t.contains(&line), "{line} in {t}");
        }
        // Latency only for I/Os that completed: the timed-out read is not in it.
        for op in ["read", "write", "write_read"] {
            let line =
                format!("tenure_io_duration_seconds_count{{backend=\"sim\",op=\"{op}\"}} 1\n");
            assert!(t.contains(&line), "{line} in {t}");
        }
    }
}
