//! The supervisor: a thread that never touches shared storage. It owns the watchdog feeder
//! and the lease holders' pidfds, tracks each lockspace's renewal deadline, and when a deadline
//! passes (spec/PROTOCOL.md "Recovery") writes the fence record, kills the lockspace's holders
//! (kill path or SIGTERM during the grace period, then SIGKILL once a second, a bounded number
//! of times) and, when all of them are dead, removes the lockspace's watchdog source cleanly
//! so feeding resumes and the host is not reset. If a holder survives, feeding stays withheld
//! and the watchdog fires.
//!
//! The reactor reports joins, renewals, holders and clean leaves through [`Supervisor`]
//! methods (a mutex held for microseconds); it learns which lost lockspaces were cleared from
//! [`Supervisor::take_cleared`], after a wake-up on its eventfd.
//!
//! Invariants: a lockspace's source is only ever removed cleanly after a clean leave or after
//! every holder is dead; a deadline, once passed, is never extended (the multiplexer refuses
//! late refreshes); signals go through pidfds, so a recycled pid is never signalled.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::eventfd::EventFd;
use rustix::process::{Pid, PidfdFlags, Signal};
use serde::Serialize;
use tenure_watchdog::fence::{FenceLog, FenceRecord, RenewalNote};
use tenure_watchdog::mux::SourceId;
use tenure_watchdog::{ArmedWatchdog, Feeder, Multiplexer, Tick, WatchdogError, WatchdogSpec};

/// How often the watchdog is fed at most, and how early feeding stops before a deadline.
pub const TEST_INTERVAL: Duration = Duration::from_secs(1);

/// Lockspaces supervised at once.
pub const SPACES_MAX: usize = 64;

/// Holders per lockspace.
pub const HOLDERS_MAX: usize = 4096;

/// Renewals remembered per lockspace for fence records.
const RENEWALS_KEPT: usize = 16;

/// Supervisor settings.
#[derive(Clone, Debug)]
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
}

#[derive(Debug)]
struct Holder {
    pidfd: OwnedFd,
    kill_path: Option<(String, Vec<String>)>,
    /// sanlock RESTRICT bits: SIGKILL (0x2) or SIGTERM (0x4) replaced by the other signal.
    restrict: u32,
    signalled: bool,
}

#[derive(Debug)]
struct Killing {
    started: Instant,
    next_step: Instant,
    sigkills: u32,
    gave_up: bool,
}

#[derive(Debug)]
struct Space {
    host_id: u64,
    generation: u64,
    source: Option<SourceId>,
    deadline: Option<Instant>,
    holders: HashMap<i32, Holder>,
    killing: Option<Killing>,
    cleared: bool,
    /// Marked used (sanlock SET_CONFIG): like an unkillable holder, a loss is never cleared,
    /// so the watchdog fires.
    used: bool,
    renewals: Vec<RenewalNote>,
}

#[derive(Debug)]
struct State {
    cfg: SupervisorConfig,
    feeder: Option<Feeder>,
    spaces: HashMap<String, Space>,
    cleared: Vec<String>,
    last_tick: Option<String>,
    stop: bool,
}

/// Per-lockspace view for `status`.
#[derive(Clone, Debug, Serialize)]
pub struct SpaceStatus {
    /// Lockspace.
    pub name: String,
    /// Holder pids.
    pub holders: Vec<i32>,
    /// Milliseconds until the renewal deadline (negative: passed).
    pub deadline_in_ms: Option<i64>,
    /// Holders are being killed since this many ms.
    pub killing_for_ms: Option<u64>,
    /// All holders dead after a loss; the lockspace no longer feeds the watchdog.
    pub cleared: bool,
    /// Marked used: a loss resets the host even without holders.
    pub used: bool,
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

/// Converts a reactor deadline (CLOCK_MONOTONIC nanoseconds) to an Instant (also
/// CLOCK_MONOTONIC on Linux) by way of the current distance to it.
pub fn instant_of(deadline: tenure_core::clock::Time, now: tenure_core::clock::Time) -> Instant {
    let base = Instant::now();
    if deadline >= now {
        base + deadline.saturating_since(now)
    } else {
        base.checked_sub(now.saturating_since(deadline))
            .unwrap_or(base)
    }
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

impl Supervisor {
    /// Starts the supervisor thread. `wake` is written when the reactor has news to collect.
    pub fn start(cfg: SupervisorConfig, wake: Arc<EventFd>) -> std::io::Result<Self> {
        let shared = Arc::new((
            Mutex::new(State {
                cfg,
                feeder: None,
                spaces: HashMap::new(),
                cleared: Vec::new(),
                last_tick: None,
                stop: false,
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
        if st.spaces.len() >= SPACES_MAX {
            return Err(SuperviseError::Full("lockspaces", SPACES_MAX));
        }
        if st.spaces.contains_key(name) {
            return Err(SuperviseError::Exists(name.to_owned()));
        }
        if st.feeder.is_none() {
            let wd =
                ArmedWatchdog::arm(&st.cfg.watchdog, st.cfg.fire_timeout_s, &st.cfg.marker_dir)?;
            tracing::info!(watchdog = %st.cfg.watchdog, fire_timeout_s = st.cfg.fire_timeout_s, "watchdog armed");
            st.feeder = Some(Feeder::new(wd, Multiplexer::new(TEST_INTERVAL, SPACES_MAX)));
        }
        st.spaces.insert(
            name.to_owned(),
            Space {
                host_id,
                generation: 0,
                source: None,
                deadline: None,
                holders: HashMap::new(),
                killing: None,
                cleared: false,
                used: false,
                renewals: Vec::new(),
            },
        );
        drop(st);
        self.poke();
        Ok(())
    }

    /// The lockspace was joined: its renewal deadline starts to gate feeding.
    pub fn joined(
        &self,
        name: &str,
        generation: u64,
        deadline: Instant,
    ) -> Result<(), SuperviseError> {
        let mut guard = self.lock();
        let st = &mut *guard;
        let feeder = st.feeder.as_mut().ok_or(SuperviseError::NotArmed)?;
        let space = st
            .spaces
            .get_mut(name)
            .ok_or_else(|| SuperviseError::Unknown(name.to_owned()))?;
        space.generation = generation;
        space.deadline = Some(deadline);
        space.source = Some(
            feeder
                .mux
                .add(name, deadline)
                .map_err(|e| SuperviseError::Mux(e.to_string()))?,
        );
        drop(guard);
        self.poke();
        Ok(())
    }

    /// A renewal succeeded: the deadline moves on (refused once it has passed).
    pub fn renewed(&self, name: &str, deadline: Instant, note: RenewalNote) {
        let mut guard = self.lock();
        let st = &mut *guard;
        let (Some(feeder), Some(space)) = (st.feeder.as_mut(), st.spaces.get_mut(name)) else {
            return;
        };
        if space.renewals.len() == RENEWALS_KEPT {
            space.renewals.remove(0);
        }
        space.renewals.push(note);
        if space.killing.is_some() || space.cleared {
            return;
        }
        if let Some(src) = space.source {
            if feeder.mux.refresh(src, Instant::now(), deadline).is_ok() {
                space.deadline = Some(deadline);
            }
        }
    }

    /// The reactor found the lockspace lost before its deadline (e.g. our slot was
    /// overwritten): the deadline is now.
    pub fn lost(&self, name: &str) {
        let mut guard = self.lock();
        let st = &mut *guard;
        let now = Instant::now();
        if let Some(space) = st.spaces.get_mut(name) {
            if space.deadline.is_some_and(|d| d > now) {
                space.deadline = Some(now);
                if let (Some(src), Some(feeder)) = (space.source, st.feeder.as_mut()) {
                    let _ = feeder.mux.refresh(src, now, now);
                }
            }
        }
        drop(guard);
        self.poke();
    }

    /// Records a failed renewal (for the fence record).
    pub fn renewal_failed(&self, name: &str, note: RenewalNote) {
        let mut st = self.lock();
        if let Some(space) = st.spaces.get_mut(name) {
            if space.renewals.len() == RENEWALS_KEPT {
                space.renewals.remove(0);
            }
            space.renewals.push(note);
        }
    }

    /// A process now holds leases in the lockspace.
    pub fn add_holder(
        &self,
        name: &str,
        pid: i32,
        kill_path: Option<(String, Vec<String>)>,
        restrict: u32,
    ) -> Result<(), SuperviseError> {
        let p = Pid::from_raw(pid).ok_or(SuperviseError::Pid(pid, "not a valid pid".into()))?;
        let fd = rustix::process::pidfd_open(p, PidfdFlags::empty())
            .map_err(|e| SuperviseError::Pid(pid, e.to_string()))?;
        let mut st = self.lock();
        let space = st
            .spaces
            .get_mut(name)
            .ok_or_else(|| SuperviseError::Unknown(name.to_owned()))?;
        if space.holders.len() >= HOLDERS_MAX && !space.holders.contains_key(&pid) {
            return Err(SuperviseError::Full("holders", HOLDERS_MAX));
        }
        space.holders.entry(pid).or_insert(Holder {
            pidfd: fd,
            kill_path,
            restrict,
            signalled: false,
        });
        drop(st);
        self.poke();
        Ok(())
    }

    /// Marks the lockspace used or not (sanlock's SET_CONFIG USED): a used lockspace that is
    /// lost is never cleared, as if an unkillable process held a lease in it.
    pub fn set_used(&self, name: &str, used: bool) -> Result<(), SuperviseError> {
        let mut st = self.lock();
        let space = st
            .spaces
            .get_mut(name)
            .ok_or_else(|| SuperviseError::Unknown(name.to_owned()))?;
        space.used = used;
        drop(st);
        self.poke();
        Ok(())
    }

    /// A process holds no more leases in the lockspace.
    pub fn remove_holder(&self, name: &str, pid: i32) {
        let mut st = self.lock();
        if let Some(space) = st.spaces.get_mut(name) {
            space.holders.remove(&pid);
        }
        drop(st);
        self.poke();
    }

    /// The lockspace was left cleanly (or never joined, or cleared after a loss and
    /// forgotten): its source goes, and the watchdog is disarmed when none is left.
    pub fn remove_space(&self, name: &str) -> Result<(), SuperviseError> {
        let mut guard = self.lock();
        let st = &mut *guard;
        let Some(space) = st.spaces.get(name) else {
            return Ok(());
        };
        if space.killing.is_some() && !space.cleared {
            return Err(SuperviseError::Busy(name.to_owned()));
        }
        let space = st.spaces.remove(name).expect("checked above");
        if let (Some(src), Some(feeder)) = (space.source, st.feeder.as_mut()) {
            // A source of a cleared lockspace was removed when it was cleared.
            let _ = feeder.mux.remove(src);
        }
        if st.spaces.is_empty() {
            if let Some(feeder) = st.feeder.take() {
                match feeder.disarm() {
                    Ok(Ok(())) => tracing::info!("watchdog disarmed (no lockspace left)"),
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "watchdog disarm failed: it may fire");
                        return Err(e.into());
                    }
                    Err(feeder) => st.feeder = Some(*feeder),
                }
            }
        }
        drop(guard);
        self.poke();
        Ok(())
    }

    /// Lost lockspaces whose holders are all dead since the last call.
    pub fn take_cleared(&self) -> Vec<String> {
        std::mem::take(&mut self.lock().cleared)
    }

    /// What `status` shows.
    pub fn status(&self) -> SupervisorStatus {
        let st = self.lock();
        let now = Instant::now();
        let mut spaces: Vec<SpaceStatus> = st
            .spaces
            .iter()
            .map(|(name, s)| SpaceStatus {
                name: name.clone(),
                holders: {
                    let mut h: Vec<i32> = s.holders.keys().copied().collect();
                    h.sort_unstable();
                    h
                },
                deadline_in_ms: s.deadline.map(|d| {
                    if d >= now {
                        i64::try_from(d.duration_since(now).as_millis()).unwrap_or(i64::MAX)
                    } else {
                        -i64::try_from(now.duration_since(d).as_millis()).unwrap_or(i64::MAX)
                    }
                }),
                killing_for_ms: s
                    .killing
                    .as_ref()
                    .map(|k| now.duration_since(k.started).as_millis() as u64),
                cleared: s.cleared,
                used: s.used,
            })
            .collect();
        spaces.sort_by(|a, b| a.name.cmp(&b.name));
        SupervisorStatus {
            watchdog: st.cfg.watchdog.to_string(),
            armed: st.feeder.is_some(),
            fire_timeout_s: st.cfg.fire_timeout_s,
            last_fed_ms_ago: st
                .feeder
                .as_ref()
                .and_then(Feeder::last_fed)
                .map(|t| now.duration_since(t).as_millis() as u64),
            last_tick: st.last_tick.clone(),
            spaces,
        }
    }

    /// Stops the thread (clean shutdown: every lockspace was removed first, so the watchdog
    /// is disarmed; otherwise it stays armed and fires, which is what must happen).
    pub fn stop(mut self) {
        self.lock().stop = true;
        self.poke();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Supervisor errors.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    /// Arming (or disarming) the watchdog failed.
    #[error("watchdog: {0}")]
    Watchdog(#[from] WatchdogError),
    /// A limit.
    #[error("too many {0} (limit {1})")]
    Full(&'static str, usize),
    /// Already supervised.
    #[error("lockspace {0} is already supervised")]
    Exists(String),
    /// Not supervised.
    #[error("lockspace {0} is not supervised")]
    Unknown(String),
    /// Holders are being killed.
    #[error("lockspace {0} was lost and its holders are still being killed")]
    Busy(String),
    /// Not armed.
    #[error("the watchdog is not armed")]
    NotArmed,
    /// The multiplexer refused.
    #[error("watchdog multiplexer: {0}")]
    Mux(String),
    /// pidfd_open failed.
    #[error("pid {0}: {1}")]
    Pid(i32, String),
}

fn signal(pid: i32, h: &mut Holder, sig: Signal) {
    // A holder that restricted one signal gets the other.
    let sig = match sig {
        s if s == Signal::KILL && h.restrict & 0x2 != 0 => Signal::TERM,
        s if s == Signal::TERM && h.restrict & 0x4 != 0 => Signal::KILL,
        s => s,
    };
    match rustix::process::pidfd_send_signal(&h.pidfd, sig) {
        Ok(()) => h.signalled = true,
        // ESRCH: it exited in the meantime.
        Err(e) => tracing::debug!(pid, error = %e, "signal not delivered"),
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

fn fence_record(cfg: &SupervisorConfig, name: &str, s: &Space) -> FenceRecord {
    let mut alive_pids: Vec<i32> = s
        .holders
        .iter()
        .filter(|(_, h)| alive(&h.pidfd))
        .map(|(p, _)| *p)
        .collect();
    alive_pids.sort_unstable();
    FenceRecord {
        written_at_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        boot_id: tenure_watchdog::marker::boot_id(),
        lockspace: name.to_owned(),
        host_id: s.host_id,
        generation: s.generation,
        reason: format!(
            "renewals of lockspace {name} failed until the renewal deadline; {} lease holder(s) \
             alive are being killed; the watchdog fires unless all of them die in time",
            alive_pids.len()
        ),
        last_renewals: s.renewals.clone(),
        renewals_omitted: 0,
        pids_signalled: Vec::new(),
        pids_alive: alive_pids,
        pids_omitted: 0,
        watchdog: cfg.watchdog.to_string(),
        fire_timeout_s: cfg.fire_timeout_s,
    }
    .capped()
}

/// One pass over the lockspaces at `now`; returns the next instant a pass is needed.
fn supervise(st: &mut State, now: Instant) -> Instant {
    let mut next = now + TEST_INTERVAL;
    let grace = st.cfg.kill_grace;
    let sigkill_max = st.cfg.sigkill_max;
    let mut cleared = Vec::new();
    for (name, s) in &mut st.spaces {
        if s.cleared {
            continue;
        }
        let Some(deadline) = s.deadline else {
            continue;
        };
        if now < deadline {
            next = next.min(deadline);
            continue;
        }
        s.holders.retain(|_, h| alive(&h.pidfd));
        if s.killing.is_none() {
            tracing::error!(lockspace = %name, holders = s.holders.len(), "renewal deadline passed: lockspace lost");
            if !s.holders.is_empty() || s.used {
                let rec = fence_record(&st.cfg, name, s);
                if let Err(e) = FenceLog::new(&st.cfg.state_dir).append(rec) {
                    tracing::error!(error = %e, "fence record not written");
                }
                for (pid, h) in &mut s.holders {
                    match h.kill_path.clone() {
                        Some((path, args)) => run_kill_path(*pid, &path, &args),
                        None => signal(*pid, h, Signal::TERM),
                    }
                }
            }
            s.killing = Some(Killing {
                started: now,
                next_step: now + Duration::from_secs(1),
                sigkills: 0,
                gave_up: false,
            });
        }
        let k = s.killing.as_mut().expect("set above");
        if s.holders.is_empty() && s.used {
            if !k.gave_up {
                k.gave_up = true;
                tracing::error!(lockspace = %name, "lockspace lost while marked used: it is not cleared and the watchdog will fire");
            }
            continue;
        }
        if s.holders.is_empty() {
            s.cleared = true;
            if let (Some(src), Some(feeder)) = (s.source.take(), st.feeder.as_mut()) {
                let _ = feeder.mux.remove(src);
            }
            tracing::warn!(lockspace = %name, after_ms = now.duration_since(k.started).as_millis() as u64, "all holders dead: lockspace cleared, the host is not reset");
            cleared.push(name.clone());
            continue;
        }
        if now >= k.next_step && !k.gave_up {
            k.next_step = now + Duration::from_secs(1);
            if now.duration_since(k.started) < grace {
                for (pid, h) in &mut s.holders {
                    if h.kill_path.is_none() {
                        signal(*pid, h, Signal::TERM);
                    }
                }
            } else if k.sigkills < sigkill_max {
                k.sigkills += 1;
                for (pid, h) in &mut s.holders {
                    signal(*pid, h, Signal::KILL);
                }
            } else {
                k.gave_up = true;
                let pids: Vec<i32> = s.holders.keys().copied().collect();
                tracing::error!(lockspace = %name, ?pids, "holders survive SIGKILL: the watchdog will fire");
            }
        }
        // Poll for deaths often while killing (pidfd readability is checked each pass).
        next = next.min(now + Duration::from_millis(100));
    }
    st.cleared.extend(cleared.iter().cloned());
    next
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
        let now = Instant::now();
        let before = st.cleared.len();
        let mut next = supervise(&mut st, now);
        if st.cleared.len() > before {
            // The reactor collects them with take_cleared.
            let _ = wake.write(1);
        }
        if let Some(f) = st.feeder.as_mut() {
            let tick = f.tick(now);
            let text = match &tick {
                Tick::Fed => "fed".to_owned(),
                Tick::Withheld(w) => format!("withheld: {w:?}"),
                Tick::FeedFailed(e) => {
                    tracing::error!(error = %e, "watchdog keepalive failed");
                    format!("keepalive failed: {e}")
                }
            };
            next = next
                .min(f.mux.poll_timeout(now))
                .max(now + Duration::from_millis(10));
            st.last_tick = Some(text);
        }
        let wait = next.saturating_duration_since(Instant::now());
        st = cv
            .wait_timeout(st, wait)
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0;
    }
}
