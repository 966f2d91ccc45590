//! The guard: the supervision decisions of spec/PROTOCOL.md "Recovery", sans-IO. It tracks
//! each lockspace's renewal deadline and its lease holders, decides when the watchdog may be
//! fed, and when a deadline passes, whom to signal and when, when the fence record is written,
//! when to give up (the watchdog then fires) and when a lost lockspace is cleared (all holders
//! dead; feeding resumes and the host is not reset). It holds no fd, clock, thread or device:
//! [`crate::supervise`] carries its effects out on the real host (pidfds, kill paths, the
//! watchdog device, the fence log), the whole-cluster simulation on simulated ones.
//!
//! Call order, per pass (at least once per [`TEST_INTERVAL`], sooner at the time [`Guard::pass`] returns):
//! 1. report what happened: [`Guard::joined`], [`Guard::renewed`], [`Guard::lost`],
//!    [`Guard::add_holder`], [`Guard::remove_holder`], and holders seen dead
//!    ([`Guard::holder_died`]; [`Guard::watched`] lists whose death matters now);
//! 2. [`Guard::pass`] at `now`: takes the decisions;
//! 3. carry out [`Guard::poll_effect`] until it returns `None`;
//! 4. ask [`Guard::feed`] whether the watchdog may be fed now, and feed it if so.
//!
//! Invariants: a deadline, once passed, is never extended (the multiplexer refuses late
//! refreshes); a lockspace's watchdog source goes only after a clean leave or once every holder
//! is dead; a lockspace marked used is never cleared after a loss.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use serde::Serialize;
use tenure_core::clock::Time;
use tenure_watchdog::fence::RenewalNote;
use tenure_watchdog::mux::{FeedDecision, SourceId};
use tenure_watchdog::Multiplexer;

/// How often the watchdog is fed at most, and how early feeding stops before a deadline.
pub const TEST_INTERVAL: Duration = Duration::from_secs(1);

/// Lockspaces supervised at once.
pub const SPACES_MAX: usize = 256;

/// Holders per lockspace.
pub const HOLDERS_MAX: usize = 4096;

/// Renewals remembered per lockspace for fence records.
const RENEWALS_KEPT: usize = 16;

/// How often deaths are looked for while holders are being killed.
const KILL_POLL: Duration = Duration::from_millis(100);

/// Time between two kill steps (SIGTERM repeats, SIGKILLs).
const KILL_STEP: Duration = Duration::from_secs(1);

/// The guard's settings.
#[derive(Clone, Debug)]
pub struct GuardConfig {
    /// Kill path / SIGTERM period after a deadline passed.
    pub kill_grace: Duration,
    /// SIGKILLs before giving up.
    pub sigkill_max: u32,
}

/// A signal the guard sends to a holder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum KillSignal {
    /// SIGTERM.
    Term,
    /// SIGKILL.
    Kill,
}

/// What the guard asks its carrier to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuardEffect {
    /// Write a fence record: the lockspace's deadline passed with holders alive (or marked
    /// used).
    Fence {
        /// Lockspace.
        lockspace: String,
        /// Our host id in it.
        host_id: u64,
        /// Our generation.
        generation: u64,
        /// The last renewals, oldest first.
        renewals: Vec<RenewalNote>,
        /// Holders alive when the deadline was found passed.
        pids_alive: Vec<i32>,
    },
    /// Send `signal` to `pid` (the holder's restrictions already applied).
    Signal {
        /// Lockspace whose loss this is for.
        lockspace: String,
        /// Holder.
        pid: i32,
        /// Signal.
        signal: KillSignal,
    },
    /// Run the holder's kill path (detached; its end is not awaited).
    KillPath {
        /// Lockspace.
        lockspace: String,
        /// Holder.
        pid: i32,
        /// Program.
        path: String,
        /// Arguments.
        args: Vec<String>,
    },
    /// Every holder of a lost lockspace is dead: it no longer gates feeding.
    Cleared {
        /// Lockspace.
        lockspace: String,
        /// Since the deadline.
        after: Duration,
    },
    /// Holders survive every SIGKILL (or the lockspace is marked used): feeding stays
    /// withheld and the watchdog fires.
    GaveUp {
        /// Lockspace.
        lockspace: String,
        /// Holders still alive.
        pids: Vec<i32>,
    },
}

/// Guard misuse or limits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
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
    /// The multiplexer refused.
    #[error("watchdog multiplexer: {0}")]
    Mux(String),
}

/// Deliberate faults, for the tests that show the safety checks bite. Never set outside them.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mutations {
    /// At a passed deadline, clear the lockspace at once without killing its holders.
    pub clear_without_kill: bool,
    /// Feed the watchdog whatever the deadlines say.
    pub feed_while_lost: bool,
    /// The whole-cluster simulation's supervision drops the holders an adoption (a restart
    /// after a crash, an upgrade) registers: adopted leases unsupervised.
    pub adopt_unsupervised: bool,
}

#[derive(Debug, Clone)]
struct Holder {
    kill_path: Option<(String, Vec<String>)>,
    /// sanlock RESTRICT bits: SIGKILL (0x2) or SIGTERM (0x4) replaced by the other signal.
    restrict: u32,
}

#[derive(Debug, Clone)]
struct Killing {
    started: Time,
    next_step: Time,
    sigkills: u32,
    gave_up: bool,
}

#[derive(Debug, Clone)]
struct Space {
    host_id: u64,
    generation: u64,
    source: Option<SourceId>,
    deadline: Option<Time>,
    holders: BTreeMap<i32, Holder>,
    killing: Option<Killing>,
    cleared: bool,
    /// Marked used (sanlock SET_CONFIG): like an unkillable holder, a loss is never cleared.
    used: bool,
    renewals: VecDeque<RenewalNote>,
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

/// The supervision decisions (see the module docs).
#[derive(Debug)]
pub struct Guard {
    cfg: GuardConfig,
    spaces: BTreeMap<String, Space>,
    mux: Multiplexer,
    /// The multiplexer counts in `Instant`s: `epoch.0` is the instant of `epoch.1`.
    epoch: (Instant, Time),
    effects: VecDeque<GuardEffect>,
    cleared: Vec<String>,
    #[doc(hidden)]
    pub mutations: Mutations,
}

fn ms_signed(a: Time, b: Time) -> i64 {
    // a - b in milliseconds.
    if a >= b {
        i64::try_from(a.saturating_since(b).as_millis()).unwrap_or(i64::MAX)
    } else {
        -i64::try_from(b.saturating_since(a).as_millis()).unwrap_or(i64::MAX)
    }
}

impl Guard {
    /// A guard whose `Time`s map to `Instant`s through `epoch` (an instant and the time it
    /// stands for: the real clock's pair, or any instant and a simulated time).
    pub fn new(cfg: GuardConfig, epoch: (Instant, Time)) -> Self {
        Guard {
            cfg,
            spaces: BTreeMap::new(),
            mux: Multiplexer::new(TEST_INTERVAL, SPACES_MAX),
            epoch,
            effects: VecDeque::new(),
            cleared: Vec::new(),
            mutations: Mutations::default(),
        }
    }

    fn instant(&self, t: Time) -> Instant {
        let (i0, t0) = self.epoch;
        if t >= t0 {
            i0 + t.saturating_since(t0)
        } else {
            i0.checked_sub(t0.saturating_since(t)).unwrap_or(i0)
        }
    }

    /// Lockspaces supervised.
    pub fn len(&self) -> usize {
        self.spaces.len()
    }

    /// No lockspace is supervised (the watchdog may be disarmed).
    pub fn is_empty(&self) -> bool {
        self.spaces.is_empty()
    }

    /// A lockspace is about to be joined.
    pub fn add_space(&mut self, name: &str, host_id: u64) -> Result<(), GuardError> {
        if self.spaces.len() >= SPACES_MAX {
            return Err(GuardError::Full("lockspaces", SPACES_MAX));
        }
        if self.spaces.contains_key(name) {
            return Err(GuardError::Exists(name.to_owned()));
        }
        self.spaces.insert(
            name.to_owned(),
            Space {
                host_id,
                generation: 0,
                source: None,
                deadline: None,
                holders: BTreeMap::new(),
                killing: None,
                cleared: false,
                used: false,
                renewals: VecDeque::with_capacity(RENEWALS_KEPT),
            },
        );
        Ok(())
    }

    /// The lockspace was joined: its renewal deadline starts to gate feeding.
    pub fn joined(
        &mut self,
        name: &str,
        generation: u64,
        deadline: Time,
    ) -> Result<(), GuardError> {
        let at = self.instant(deadline);
        let space = self
            .spaces
            .get_mut(name)
            .ok_or_else(|| GuardError::Unknown(name.to_owned()))?;
        let source = self
            .mux
            .add(name, at)
            .map_err(|e| GuardError::Mux(e.to_string()))?;
        space.generation = generation;
        space.deadline = Some(deadline);
        space.source = Some(source);
        Ok(())
    }

    fn note(space: &mut Space, note: RenewalNote) {
        if space.renewals.len() == RENEWALS_KEPT {
            space.renewals.pop_front();
        }
        space.renewals.push_back(note);
    }

    /// A renewal succeeded at `now`: the deadline moves on (refused once it has passed).
    pub fn renewed(&mut self, name: &str, now: Time, deadline: Time, note: RenewalNote) {
        let (now_i, at) = (self.instant(now), self.instant(deadline));
        let Some(space) = self.spaces.get_mut(name) else {
            return;
        };
        Self::note(space, note);
        if space.killing.is_some() || space.cleared {
            return;
        }
        if let Some(src) = space.source {
            if self.mux.refresh(src, now_i, at).is_ok() {
                space.deadline = Some(deadline);
            }
        }
    }

    /// A renewal failed (kept for the fence record).
    pub fn renewal_failed(&mut self, name: &str, note: RenewalNote) {
        if let Some(space) = self.spaces.get_mut(name) {
            Self::note(space, note);
        }
    }

    /// The lockspace was found lost before its deadline (e.g. our slot was overwritten): the
    /// deadline is now.
    pub fn lost(&mut self, name: &str, now: Time) {
        let now_i = self.instant(now);
        if let Some(space) = self.spaces.get_mut(name) {
            if space.deadline.is_some_and(|d| d > now) {
                space.deadline = Some(now);
                if let Some(src) = space.source {
                    let _ = self.mux.refresh(src, now_i, now_i);
                }
            }
        }
    }

    /// A process now holds leases in the lockspace.
    pub fn add_holder(
        &mut self,
        name: &str,
        pid: i32,
        kill_path: Option<(String, Vec<String>)>,
        restrict: u32,
    ) -> Result<(), GuardError> {
        let space = self
            .spaces
            .get_mut(name)
            .ok_or_else(|| GuardError::Unknown(name.to_owned()))?;
        if space.holders.len() >= HOLDERS_MAX && !space.holders.contains_key(&pid) {
            return Err(GuardError::Full("holders", HOLDERS_MAX));
        }
        space.holders.entry(pid).or_insert(Holder {
            kill_path,
            restrict,
        });
        Ok(())
    }

    /// A process holds no more leases in the lockspace.
    pub fn remove_holder(&mut self, name: &str, pid: i32) {
        if let Some(space) = self.spaces.get_mut(name) {
            space.holders.remove(&pid);
        }
    }

    /// A holder of the lockspace was seen dead.
    pub fn holder_died(&mut self, name: &str, pid: i32) {
        self.remove_holder(name, pid);
    }

    /// Whether `pid` holds leases in the lockspace (as far as the guard knows).
    pub fn is_holder(&self, name: &str, pid: i32) -> bool {
        self.spaces
            .get(name)
            .is_some_and(|s| s.holders.contains_key(&pid))
    }

    /// Holders whose death the next pass needs to know of: those of lockspaces past their
    /// deadline at `now`.
    pub fn watched(&self, now: Time) -> Vec<(String, i32)> {
        let mut out = Vec::new();
        for (name, s) in &self.spaces {
            if s.cleared || s.deadline.is_none_or(|d| now < d) {
                continue;
            }
            out.extend(s.holders.keys().map(|p| (name.clone(), *p)));
        }
        out
    }

    /// Marks the lockspace used or not.
    pub fn set_used(&mut self, name: &str, used: bool) -> Result<(), GuardError> {
        let space = self
            .spaces
            .get_mut(name)
            .ok_or_else(|| GuardError::Unknown(name.to_owned()))?;
        space.used = used;
        Ok(())
    }

    /// The lockspace was left cleanly (or never joined, or cleared and forgotten): it stops
    /// gating feeding. Refused while its holders are being killed.
    pub fn remove_space(&mut self, name: &str) -> Result<(), GuardError> {
        let Some(space) = self.spaces.get(name) else {
            return Ok(());
        };
        if space.killing.is_some() && !space.cleared {
            return Err(GuardError::Busy(name.to_owned()));
        }
        if let Some(space) = self.spaces.remove(name) {
            if let Some(src) = space.source {
                // A cleared lockspace's source went when it was cleared.
                let _ = self.mux.remove(src);
            }
        }
        Ok(())
    }

    /// Whether cleared lockspaces wait for [`Guard::take_cleared`].
    pub fn cleared_pending(&self) -> bool {
        !self.cleared.is_empty()
    }

    /// Lost lockspaces cleared since the last call.
    pub fn take_cleared(&mut self) -> Vec<String> {
        std::mem::take(&mut self.cleared)
    }

    /// The next effect to carry out.
    pub fn poll_effect(&mut self) -> Option<GuardEffect> {
        self.effects.pop_front()
    }

    /// Whether the watchdog may be fed at `now` (every lockspace's deadline is more than one
    /// test interval ahead, or the lockspace was cleared).
    pub fn feed(&mut self, now: Time) -> FeedDecision {
        let d = self.mux.poll_feed(self.instant(now));
        if self.mutations.feed_while_lost {
            return FeedDecision::Feed;
        }
        d
    }

    /// When the watchdog's feeding stops being allowed at the latest (the earliest
    /// deadline less one test interval), or None without a deadline.
    pub fn feed_until(&self) -> Option<Time> {
        self.spaces
            .values()
            .filter(|s| !s.cleared)
            .filter_map(|s| s.deadline)
            .min()
            .map(|d| Time::from_nanos(d.as_nanos().saturating_sub(TEST_INTERVAL.as_nanos() as u64)))
    }

    fn signal_of(h: &Holder, sig: KillSignal) -> KillSignal {
        // A holder that restricted one signal gets the other.
        match sig {
            KillSignal::Kill if h.restrict & 0x2 != 0 => KillSignal::Term,
            KillSignal::Term if h.restrict & 0x4 != 0 => KillSignal::Kill,
            s => s,
        }
    }

    /// One pass at `now`; returns when the next pass is due at the latest.
    pub fn pass(&mut self, now: Time) -> Time {
        let mut next = now.saturating_add(TEST_INTERVAL);
        let grace = self.cfg.kill_grace;
        let sigkill_max = self.cfg.sigkill_max;
        let mutations = self.mutations;
        for (name, s) in &mut self.spaces {
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
            if s.killing.is_none() {
                tracing::error!(lockspace = %name, holders = s.holders.len(), "renewal deadline passed: lockspace lost");
                if mutations.clear_without_kill {
                    s.holders.clear();
                } else if !s.holders.is_empty() || s.used {
                    self.effects.push_back(GuardEffect::Fence {
                        lockspace: name.clone(),
                        host_id: s.host_id,
                        generation: s.generation,
                        renewals: s.renewals.iter().cloned().collect(),
                        pids_alive: s.holders.keys().copied().collect(),
                    });
                    for (pid, h) in &s.holders {
                        self.effects.push_back(match &h.kill_path {
                            Some((path, args)) => GuardEffect::KillPath {
                                lockspace: name.clone(),
                                pid: *pid,
                                path: path.clone(),
                                args: args.clone(),
                            },
                            None => GuardEffect::Signal {
                                lockspace: name.clone(),
                                pid: *pid,
                                signal: Self::signal_of(h, KillSignal::Term),
                            },
                        });
                    }
                }
                s.killing = Some(Killing {
                    started: now,
                    next_step: now.saturating_add(KILL_STEP),
                    sigkills: 0,
                    gave_up: false,
                });
            }
            let Some(k) = s.killing.as_mut() else {
                continue;
            };
            if s.holders.is_empty() && s.used {
                if !k.gave_up {
                    k.gave_up = true;
                    tracing::error!(lockspace = %name, "lockspace lost while marked used: it is not cleared and the watchdog will fire");
                    self.effects.push_back(GuardEffect::GaveUp {
                        lockspace: name.clone(),
                        pids: Vec::new(),
                    });
                }
                continue;
            }
            if s.holders.is_empty() {
                s.cleared = true;
                if let Some(src) = s.source.take() {
                    let _ = self.mux.remove(src);
                }
                let after = now.saturating_since(k.started);
                tracing::warn!(lockspace = %name, after_ms = after.as_millis() as u64, "all holders dead: lockspace cleared, the host is not reset");
                self.effects.push_back(GuardEffect::Cleared {
                    lockspace: name.clone(),
                    after,
                });
                self.cleared.push(name.clone());
                continue;
            }
            if now >= k.next_step && !k.gave_up {
                k.next_step = now.saturating_add(KILL_STEP);
                if now.saturating_since(k.started) < grace {
                    for (pid, h) in &s.holders {
                        if h.kill_path.is_none() {
                            self.effects.push_back(GuardEffect::Signal {
                                lockspace: name.clone(),
                                pid: *pid,
                                signal: Self::signal_of(h, KillSignal::Term),
                            });
                        }
                    }
                } else if k.sigkills < sigkill_max {
                    k.sigkills += 1;
                    for (pid, h) in &s.holders {
                        self.effects.push_back(GuardEffect::Signal {
                            lockspace: name.clone(),
                            pid: *pid,
                            signal: Self::signal_of(h, KillSignal::Kill),
                        });
                    }
                } else {
                    k.gave_up = true;
                    let pids: Vec<i32> = s.holders.keys().copied().collect();
                    tracing::error!(lockspace = %name, ?pids, "holders survive SIGKILL: the watchdog will fire");
                    self.effects.push_back(GuardEffect::GaveUp {
                        lockspace: name.clone(),
                        pids,
                    });
                }
            }
            // Look for deaths often while killing.
            next = next.min(now.saturating_add(KILL_POLL));
        }
        next
    }

    /// What `status` shows of each lockspace at `now`.
    pub fn status(&self, now: Time) -> Vec<SpaceStatus> {
        self.spaces
            .iter()
            .map(|(name, s)| SpaceStatus {
                name: name.clone(),
                holders: s.holders.keys().copied().collect(),
                deadline_in_ms: s.deadline.map(|d| ms_signed(d, now)),
                killing_for_ms: s
                    .killing
                    .as_ref()
                    .map(|k| now.saturating_since(k.started).as_millis() as u64),
                cleared: s.cleared,
                used: s.used,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: u64) -> Time {
        Time::from_nanos(s * 1_000_000_000)
    }

    fn guard() -> Guard {
        Guard::new(
            GuardConfig {
                kill_grace: Duration::from_secs(3),
                sigkill_max: 2,
            },
            (Instant::now(), Time::ZERO),
        )
    }

    fn effects(g: &mut Guard) -> Vec<GuardEffect> {
        std::iter::from_fn(|| g.poll_effect()).collect()
    }

    fn ok_note() -> RenewalNote {
        RenewalNote {
            at_unix_ms: 0,
            latency_ms: 1,
            ok: true,
            error: None,
        }
    }

    #[test]
    fn feeds_until_a_deadline_is_near_then_kills_and_clears_when_holders_die() {
        let mut g = guard();
        g.add_space("ls", 1).unwrap();
        g.joined("ls", 1, t(10)).unwrap();
        g.add_holder("ls", 100, None, 0).unwrap();
        g.add_holder("ls", 101, None, 0x4).unwrap();
        assert_eq!(g.feed(t(5)), FeedDecision::Feed);
        g.renewed("ls", t(5), t(20), ok_note());
        assert_eq!(g.feed(t(18)), FeedDecision::Feed);
        assert!(matches!(g.feed(t(19)), FeedDecision::Withhold(_)));
        g.pass(t(19));
        assert!(effects(&mut g).is_empty());
        // The deadline passes: a fence record, SIGTERM (SIGKILL for the holder that
        // restricted SIGTERM).
        g.pass(t(20));
        let e = effects(&mut g);
        assert!(
            matches!(&e[0], GuardEffect::Fence { pids_alive, .. } if pids_alive == &vec![100, 101])
        );
        assert!(e.contains(&GuardEffect::Signal {
            lockspace: "ls".into(),
            pid: 100,
            signal: KillSignal::Term
        }));
        assert!(e.contains(&GuardEffect::Signal {
            lockspace: "ls".into(),
            pid: 101,
            signal: KillSignal::Kill
        }));
        // A late renewal does not bring it back.
        g.renewed("ls", t(21), t(40), ok_note());
        assert!(matches!(g.feed(t(21)), FeedDecision::Withhold(w) if w.expired));
        assert_eq!(
            g.watched(t(21)),
            vec![("ls".to_owned(), 100), ("ls".to_owned(), 101)]
        );
        g.holder_died("ls", 100);
        g.holder_died("ls", 101);
        g.pass(t(21));
        assert!(matches!(
            &effects(&mut g)[..],
            [GuardEffect::Cleared { .. }]
        ));
        assert_eq!(g.take_cleared(), vec!["ls".to_owned()]);
        assert_eq!(g.feed(t(22)), FeedDecision::Feed);
    }

    #[test]
    fn escalates_to_sigkill_after_the_grace_then_gives_up() {
        let mut g = guard();
        g.add_space("ls", 1).unwrap();
        g.joined("ls", 1, t(10)).unwrap();
        g.add_holder("ls", 7, None, 0).unwrap();
        let mut kills = 0;
        let mut gave_up = false;
        let mut now = t(10);
        for _ in 0..200 {
            g.pass(now);
            for e in effects(&mut g) {
                match e {
                    GuardEffect::Signal {
                        signal: KillSignal::Kill,
                        ..
                    } => kills += 1,
                    GuardEffect::GaveUp { pids, .. } => {
                        assert_eq!(pids, vec![7]);
                        gave_up = true;
                    }
                    GuardEffect::Cleared { .. } => panic!("cleared with a live holder"),
                    _ => {}
                }
            }
            now = now.saturating_add(Duration::from_millis(100));
        }
        assert_eq!(kills, 2);
        assert!(gave_up);
        assert!(matches!(g.feed(now), FeedDecision::Withhold(_)));
        assert!(
            g.remove_space("ls").is_err(),
            "a lockspace being killed is not removed"
        );
    }

    #[test]
    fn a_used_lockspace_is_never_cleared() {
        let mut g = guard();
        g.add_space("ls", 1).unwrap();
        g.joined("ls", 1, t(10)).unwrap();
        g.set_used("ls", true).unwrap();
        g.lost("ls", t(3));
        g.pass(t(3));
        let e = effects(&mut g);
        assert!(matches!(&e[0], GuardEffect::Fence { .. }));
        assert!(e.iter().any(|e| matches!(e, GuardEffect::GaveUp { .. })));
        assert!(g.take_cleared().is_empty());
        assert!(matches!(g.feed(t(4)), FeedDecision::Withhold(_)));
    }

    #[test]
    fn the_mutations_do_what_they_say() {
        let mut g = guard();
        g.mutations.clear_without_kill = true;
        g.add_space("ls", 1).unwrap();
        g.joined("ls", 1, t(10)).unwrap();
        g.add_holder("ls", 7, None, 0).unwrap();
        g.pass(t(10));
        assert!(matches!(
            &effects(&mut g)[..],
            [GuardEffect::Cleared { .. }]
        ));
        let mut g = guard();
        g.mutations.feed_while_lost = true;
        g.add_space("ls", 1).unwrap();
        g.joined("ls", 1, t(10)).unwrap();
        assert_eq!(g.feed(t(11)), FeedDecision::Feed);
    }
}
