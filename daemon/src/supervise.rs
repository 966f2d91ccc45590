//! The supervisor: a thread that never touches shared storage and carries out the guard's
//! decisions ([`crate::host::guard`], spec/PROTOCOL.md "Recovery") on this host: it owns the
//! watchdog device and the lease holders' pidfds, reports holders that died, signals them and
//! starts kill paths when told, writes fence records, and feeds the watchdog when the guard
//! allows it. If a holder survives, feeding stays withheld and the watchdog fires.
//!
//! The reactor reports joins, renewals, holders and clean leaves through [`Supervisor`]
//! methods (a mutex held for microseconds); it learns which lost lockspaces were cleared from
//! [`Supervisor::take_cleared`], after a wake-up on its eventfd.
//!
//! Invariants: signals go through pidfds, so a recycled pid is never signalled; the watchdog
//! is disarmed only when the guard supervises no lockspace.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::eventfd::EventFd;
use rustix::process::{Pid, PidfdFlags, Signal};
use serde::Serialize;
use tenure_core::clock::{MonotonicClock, Time};
use tenure_watchdog::fence::{FenceLog, FenceRecord, RenewalNote};
use tenure_watchdog::mux::FeedDecision;
use tenure_watchdog::{ArmedWatchdog, WatchdogError, WatchdogSpec};

use crate::host::guard::{Guard, GuardConfig, GuardEffect, GuardError, KillSignal};
pub use crate::host::guard::{SpaceStatus, HOLDERS_MAX, SPACES_MAX, TEST_INTERVAL};

/// Supervisor settings.
#[derive(Debug)]
pub struct SupervisorConfig {
    /// The watchdog.
    pub watchdog: WatchdogSpec,
    /// Its fire timeout W.
    pub fire_timeout_s: u32,
    /// Directory of the armed marker.
    pub marker_dir: PathBuf,
    /// Directory of the fence log.
    pub state_dir: PathBuf,
    /// Kill path / SIGTERM period.
    pub kill_grace: Duration,
    /// SIGKILLs before giving up.
    pub sigkill_max: u32,
    /// A dead predecessor (pid, start ticks) whose state this process adopts: its armed
    /// marker is taken over at the first arming instead of refused (crate::host::handover).
    pub predecessor: Option<(i32, u64)>,
    /// A running predecessor handing over (a planned upgrade): its pid and start ticks, and
    /// its armed watchdog's fd (none for kind none), used at the first arming instead of
    /// opening the watchdog.
    pub handed_over: Option<HandedOver>,
}

/// The watchdog a running predecessor hands over ([`SupervisorConfig::handed_over`]).
#[derive(Debug)]
pub struct HandedOver {
    /// Its pid and start ticks.
    pub from: (i32, u64),
    /// The armed device's (or emulator connection's) fd.
    pub fd: Option<OwnedFd>,
}

#[derive(Debug)]
struct State {
    cfg: SupervisorConfig,
    guard: Guard,
    watchdog: Option<ArmedWatchdog>,
    last_fed: Option<Instant>,
    /// Holders' pidfds by (lockspace, pid).
    pidfds: HashMap<(String, i32), OwnedFd>,
    /// What the last pass did with the watchdog (status).
    last_tick: Option<String>,
    stop: bool,
    /// Handing over to a successor: no pass, no feeding, no kill (thawed if it fails).
    frozen: bool,
}

/// Supervisor view for `status`.
#[derive(Clone, Debug, Serialize)]
pub struct SupervisorStatus {
    /// Watchdog description.
    pub watchdog: String,
    /// Whether it is armed.
    pub armed: bool,
    /// Fire timeout W.
    pub fire_timeout_s: u32,
    /// Milliseconds since the last keepalive.
    pub last_fed_ms_ago: Option<u64>,
    /// What the last tick did.
    pub last_tick: Option<String>,
    /// Lockspaces.
    pub spaces: Vec<SpaceStatus>,
}

/// Handle to the supervisor thread.
#[derive(Debug)]
pub struct Supervisor {
    shared: Arc<(Mutex<State>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn alive(fd: &OwnedFd) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    // A pidfd is readable once the process exited; an error means we cannot tell, which
    // counts as alive (never clear a lockspace on doubt).
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(0) => true,
        Ok(_) => !fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLIN)),
        Err(_) => true,
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Supervisor {
    /// Starts the supervisor thread. `wake` is written when the reactor has news to collect.
    pub fn start(cfg: SupervisorConfig, wake: Arc<EventFd>) -> std::io::Result<Self> {
        let guard = Guard::new(
            GuardConfig {
                kill_grace: cfg.kill_grace,
                sigkill_max: cfg.sigkill_max,
            },
            (Instant::now(), MonotonicClock.now()),
        );
        let shared = Arc::new((
            Mutex::new(State {
                cfg,
                guard,
                watchdog: None,
                last_fed: None,
                pidfds: HashMap::new(),
                last_tick: None,
                stop: false,
                frozen: false,
            }),
            Condvar::new(),
        ));
        let s2 = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("tenured-supervisor".into())
            .spawn(move || run(&s2, &wake))?;
        Ok(Supervisor {
            shared,
            thread: Some(thread),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The supervisor thread never panics while holding the lock (panic = abort in
        // release builds); a poisoned lock in tests still holds consistent data.
        self.shared
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn poke(&self) {
        self.shared.1.notify_all();
    }

    /// A lockspace is about to be joined: arms the watchdog if it is not armed yet.
    pub fn add_space(&self, name: &str, host_id: u64) -> Result<(), SuperviseError> {
        let mut st = self.lock();
        st.guard.add_space(name, host_id)?;
        if st.watchdog.is_none() {
            let predecessor = st.cfg.predecessor.take();
            let armed = match st.cfg.handed_over.take() {
                Some(h) => ArmedWatchdog::from_handover(
                    &st.cfg.watchdog,
                    st.cfg.fire_timeout_s,
                    &st.cfg.marker_dir,
                    h.fd,
                    h.from,
                ),
                None => ArmedWatchdog::arm_after(
                    &st.cfg.watchdog,
                    st.cfg.fire_timeout_s,
                    &st.cfg.marker_dir,
                    predecessor,
                ),
            };
            match armed {
                Ok(wd) => {
                    tracing::info!(watchdog = %st.cfg.watchdog, fire_timeout_s = st.cfg.fire_timeout_s, "watchdog armed");
                    st.watchdog = Some(wd);
                }
                Err(e) => {
                    let _ = st.guard.remove_space(name);
                    return Err(e.into());
                }
            }
        }
        drop(st);
        self.poke();
        Ok(())
    }

    /// Stops every decision (no pass, no feeding, no kill) for a hand-over to a successor,
    /// and returns a duplicate of the armed watchdog's fd for it (`None`: not armed, or
    /// kind none). [`Supervisor::thaw`] resumes if the hand-over fails.
    pub fn freeze(&self) -> Result<Option<OwnedFd>, SuperviseError> {
        let mut st = self.lock();
        let fd = match &st.watchdog {
            Some(w) => w.handover_fd()?,
            None => None,
        };
        st.frozen = true;
        Ok(fd)
    }

    /// Resumes after [`Supervisor::freeze`].
    pub fn thaw(&self) {
        self.lock().frozen = false;
        self.poke();
    }

    /// The lockspace was joined: its renewal deadline starts to gate feeding.
    pub fn joined(
        &self,
        name: &str,
        generation: u64,
        deadline: Time,
    ) -> Result<(), SuperviseError> {
        let mut st = self.lock();
        if st.watchdog.is_none() {
            return Err(SuperviseError::NotArmed);
        }
        st.guard.joined(name, generation, deadline)?;
        drop(st);
        self.poke();
        Ok(())
    }

    /// A renewal succeeded at `now`: the deadline moves on (refused once it has passed).
    pub fn renewed(&self, name: &str, now: Time, deadline: Time, note: RenewalNote) {
        self.lock().guard.renewed(name, now, deadline, note);
    }

    /// The reactor found the lockspace lost before its deadline (e.g. our slot was
    /// overwritten): the deadline is now.
    pub fn lost(&self, name: &str, now: Time) {
        self.lock().guard.lost(name, now);
        self.poke();
    }

    /// Records a failed renewal (for the fence record).
    pub fn renewal_failed(&self, name: &str, note: RenewalNote) {
        self.lock().guard.renewal_failed(name, note);
    }

    /// A process now holds leases in the lockspace: its pidfd is opened now (an error when
    /// it is gone already).
    pub fn add_holder(
        &self,
        name: &str,
        pid: i32,
        kill_path: Option<(String, Vec<String>)>,
        restrict: u32,
    ) -> Result<(), SuperviseError> {
        let mut st = self.lock();
        let key = (name.to_owned(), pid);
        if !st.pidfds.contains_key(&key) {
            let p = Pid::from_raw(pid).ok_or(SuperviseError::Pid(pid, "not a valid pid".into()))?;
            let fd = rustix::process::pidfd_open(p, PidfdFlags::empty())
                .map_err(|e| SuperviseError::Pid(pid, e.to_string()))?;
            st.guard.add_holder(name, pid, kill_path, restrict)?;
            st.pidfds.insert(key, fd);
        }
        drop(st);
        self.poke();
        Ok(())
    }

    /// Marks the lockspace used or not (sanlock's SET_CONFIG USED): a used lockspace that is
    /// lost is never cleared, as if an unkillable process held a lease in it.
    pub fn set_used(&self, name: &str, used: bool) -> Result<(), SuperviseError> {
        self.lock().guard.set_used(name, used)?;
        self.poke();
        Ok(())
    }

    /// A process holds no more leases in the lockspace.
    pub fn remove_holder(&self, name: &str, pid: i32) {
        let mut st = self.lock();
        st.guard.remove_holder(name, pid);
        st.pidfds.remove(&(name.to_owned(), pid));
        drop(st);
        self.poke();
    }

    /// The lockspace was left cleanly (or never joined, or cleared after a loss and
    /// forgotten): it stops gating feeding, and the watchdog is disarmed when none is left.
    pub fn remove_space(&self, name: &str) -> Result<(), SuperviseError> {
        let mut st = self.lock();
        st.guard.remove_space(name)?;
        st.pidfds.retain(|(n, _), _| n != name);
        if st.guard.is_empty() {
            if let Some(wd) = st.watchdog.take() {
                match wd.disarm() {
                    Ok(()) => tracing::info!("watchdog disarmed (no lockspace left)"),
                    Err(e) => {
                        tracing::error!(error = %e, "watchdog disarm failed: it may fire");
                        return Err(e.into());
                    }
                }
            }
        }
        drop(st);
        self.poke();
        Ok(())
    }

    /// Lost lockspaces whose holders are all dead since the last call.
    pub fn take_cleared(&self) -> Vec<String> {
        self.lock().guard.take_cleared()
    }

    /// What `status` shows.
    pub fn status(&self) -> SupervisorStatus {
        let st = self.lock();
        SupervisorStatus {
            watchdog: st.cfg.watchdog.to_string(),
            armed: st.watchdog.is_some(),
            fire_timeout_s: st.cfg.fire_timeout_s,
            last_fed_ms_ago: st
                .last_fed
                .map(|t| Instant::now().duration_since(t).as_millis() as u64),
            last_tick: st.last_tick.clone(),
            spaces: st.guard.status(MonotonicClock.now()),
        }
    }

    /// Stops the thread (clean shutdown: every lockspace was removed first, so the watchdog
    /// is disarmed; otherwise it stays armed and fires, which is what must happen).
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.lock().stop = true;
        self.poke();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl crate::host::Supervision for Supervisor {
    fn forget_predecessor(&mut self) {
        self.lock().cfg.predecessor = None;
    }
    fn freeze(&mut self) -> Result<Option<OwnedFd>, String> {
        Supervisor::freeze(self).map_err(|e| e.to_string())
    }
    fn thaw(&mut self) {
        Supervisor::thaw(self);
    }
    fn add_space(&mut self, name: &str, host_id: u64) -> Result<(), String> {
        Supervisor::add_space(self, name, host_id).map_err(|e| e.to_string())
    }
    fn joined(&mut self, name: &str, generation: u64, deadline: Time) -> Result<(), String> {
        Supervisor::joined(self, name, generation, deadline).map_err(|e| e.to_string())
    }
    fn renewed(&mut self, name: &str, now: Time, deadline: Time, note: RenewalNote) {
        Supervisor::renewed(self, name, now, deadline, note);
    }
    fn renewal_failed(&mut self, name: &str, note: RenewalNote) {
        Supervisor::renewal_failed(self, name, note);
    }
    fn lost(&mut self, name: &str, now: Time) {
        Supervisor::lost(self, name, now);
    }
    fn add_holder(
        &mut self,
        name: &str,
        pid: i32,
        kill_path: Option<(String, Vec<String>)>,
        restrict: u32,
    ) -> Result<(), String> {
        Supervisor::add_holder(self, name, pid, kill_path, restrict).map_err(|e| e.to_string())
    }
    fn remove_holder(&mut self, name: &str, pid: i32) {
        Supervisor::remove_holder(self, name, pid);
    }
    fn set_used(&mut self, name: &str, used: bool) -> Result<(), String> {
        Supervisor::set_used(self, name, used).map_err(|e| e.to_string())
    }
    fn remove_space(&mut self, name: &str) -> Result<(), String> {
        Supervisor::remove_space(self, name).map_err(|e| e.to_string())
    }
    fn take_cleared(&mut self) -> Vec<String> {
        Supervisor::take_cleared(self)
    }
    fn status(&self) -> serde_json::Value {
        serde_json::to_value(Supervisor::status(self)).unwrap_or(serde_json::Value::Null)
    }
}

/// Supervisor errors.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    /// Arming (or disarming) the watchdog failed.
    #[error("watchdog: {0}")]
    Watchdog(#[from] WatchdogError),
    /// The guard refused (a limit, an unknown lockspace, holders being killed).
    #[error("{0}")]
    Guard(#[from] GuardError),
    /// Not armed.
    #[error("the watchdog is not armed")]
    NotArmed,
    /// pidfd_open failed.
    #[error("pid {0}: {1}")]
    Pid(i32, String),
}

fn send(fd: &OwnedFd, pid: i32, sig: KillSignal) {
    let s = match sig {
        KillSignal::Term => Signal::TERM,
        KillSignal::Kill => Signal::KILL,
    };
    if let Err(e) = rustix::process::pidfd_send_signal(fd, s) {
        // ESRCH: it exited in the meantime.
        tracing::debug!(pid, error = %e, "signal not delivered");
    }
}

fn run_kill_path(pid: i32, path: &str, args: &[String]) {
    match std::process::Command::new(path)
        .args(args)
        .stdin(std::process::Stdio::null())
        .spawn()
    {
        // The kill path runs detached; its exit status is not awaited (it may outlive us).
        Ok(child) => tracing::warn!(
            pid,
            kill_path = path,
            helper = child.id(),
            "kill path started"
        ),
        Err(e) => tracing::error!(pid, kill_path = path, error = %e, "kill path failed to start"),
    }
}

/// Carries out the guard's effects.
fn carry_out(st: &mut State) {
    while let Some(e) = st.guard.poll_effect() {
        match e {
            GuardEffect::Fence {
                lockspace,
                host_id,
                generation,
                renewals,
                pids_alive,
            } => {
                let rec = FenceRecord {
                    written_at_unix_ms: unix_ms(),
                    boot_id: tenure_watchdog::marker::boot_id(),
                    reason: format!(
                        "renewals of lockspace {lockspace} failed until the renewal deadline; {} lease holder(s) \
                         alive are being killed; the watchdog fires unless all of them die in time",
                        pids_alive.len()
                    ),
                    lockspace,
                    host_id,
                    generation,
                    last_renewals: renewals,
                    renewals_omitted: 0,
                    pids_signalled: Vec::new(),
                    pids_alive,
                    pids_omitted: 0,
                    watchdog: st.cfg.watchdog.to_string(),
                    fire_timeout_s: st.cfg.fire_timeout_s,
                }
                .capped();
                if let Err(e) = FenceLog::new(&st.cfg.state_dir).append(rec) {
                    tracing::error!(error = %e, "fence record not written");
                }
            }
            GuardEffect::Signal {
                lockspace,
                pid,
                signal,
            } => {
                if let Some(fd) = st.pidfds.get(&(lockspace, pid)) {
                    send(fd, pid, signal);
                }
            }
            GuardEffect::KillPath {
                pid, path, args, ..
            } => run_kill_path(pid, &path, &args),
            // Logged by the guard; the reactor collects cleared lockspaces.
            GuardEffect::Cleared { .. } | GuardEffect::GaveUp { .. } => {}
        }
    }
}

fn run(shared: &Arc<(Mutex<State>, Condvar)>, wake: &EventFd) {
    let (lock, cv) = &**shared;
    let mut st = lock
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        if st.stop {
            return;
        }
        if st.frozen {
            st = cv
                .wait_timeout(st, Duration::from_millis(50))
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
            continue;
        }
        let now = MonotonicClock.now();
        // The deaths that matter now: holders of lockspaces past their deadline.
        for (name, pid) in st.guard.watched(now) {
            let key = (name, pid);
            if st.pidfds.get(&key).is_some_and(|fd| !alive(fd)) {
                st.pidfds.remove(&key);
                st.guard.holder_died(&key.0, pid);
            }
        }
        let mut next = st.guard.pass(now);
        let cleared = st.guard.cleared_pending();
        carry_out(&mut st);
        if cleared {
            // The reactor collects them with take_cleared.
            let _ = wake.write(1);
        }
        if st.watchdog.is_some() {
            let text = match st.guard.feed(now) {
                FeedDecision::Withhold(w) => format!("withheld: {w:?}"),
                FeedDecision::Feed => match st.watchdog.as_mut().map(ArmedWatchdog::keepalive) {
                    Some(Ok(())) => {
                        st.last_fed = Some(Instant::now());
                        "fed".to_owned()
                    }
                    Some(Err(e)) => {
                        tracing::error!(error = %e, "watchdog keepalive failed");
                        format!("keepalive failed: {e}")
                    }
                    None => "not armed".to_owned(),
                },
            };
            next = next.min(now.saturating_add(TEST_INTERVAL));
            st.last_tick = Some(text);
        }
        let next = next.max(now.saturating_add(Duration::from_millis(10)));
        let wait = next.saturating_since(MonotonicClock.now());
        st = cv
            .wait_timeout(st, wait)
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0;
    }
}
