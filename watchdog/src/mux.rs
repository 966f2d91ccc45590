//! The deadline multiplexer: one watchdog, many lockspaces.
//!
//! Each source (one per lockspace that holds leases) registers the instant by which it must
//! have renewed — its renewal-fail time — and refreshes it after every good renewal. The
//! device is fed only while **every** source's deadline lies more than one test interval
//! ahead (wdmd's rule: fail early by one test interval). The feeder polls at least once per
//! test interval, so its last keepalive lands before `deadline - test_interval`, and the
//! device fires no later than `deadline + fire timeout` for any source that stops renewing.
//!
//! Invariants:
//! - A source whose deadline has passed is expired for good: a late refresh is refused, so a
//!   lockspace lost once can never restart the feeding on its own. Only a clean removal (its
//!   holders are all dead) takes it out, and with it the reason to withhold.
//! - The multiplexer is sans-IO: time is an input (`now`), it never touches a device.
//! - The number of sources is bounded (`sources_max`); exceeding it is a typed error.

use std::time::{Duration, Instant};

/// Identifies one registered source. Ids are never reused within a multiplexer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceId(u64);

impl SourceId {
    /// The number behind this id (for logs and status output).
    pub fn get(self) -> u64 {
        self.0
    }
}

/// Misuse of the multiplexer by its caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MuxError {
    /// `sources_max` sources are registered already.
    #[error("watchdog multiplexer is full ({max} sources)")]
    Full {
        /// The configured limit.
        max: usize,
    },
    /// The id is not (or no longer) registered.
    #[error("watchdog source {0:?} is not registered")]
    UnknownSource(SourceId),
    /// The source's deadline passed before this refresh: its lockspace is lost and feeding
    /// for it stopped; only a clean removal ends that.
    #[error("watchdog source {name:?} expired {late:?} before this refresh; remove it once its holders are dead")]
    Expired {
        /// The source's name.
        name: String,
        /// How long after the deadline the refresh came.
        late: Duration,
    },
    /// A name longer than [`NAME_MAX_BYTES`].
    #[error("watchdog source name is {len} bytes; at most {NAME_MAX_BYTES} are allowed")]
    NameTooLong {
        /// Length of the refused name.
        len: usize,
    },
}

/// Longest source name accepted (a lockspace name is at most 48 bytes).
pub const NAME_MAX_BYTES: usize = 64;

#[derive(Debug, Clone)]
struct Source {
    id: SourceId,
    name: String,
    deadline: Instant,
    expired: bool,
}

/// What the feeder should do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedDecision {
    /// Every source's deadline lies beyond `now + test_interval`: feed the device.
    Feed,
    /// At least one source is too close to (or past) its deadline: do not feed.
    Withhold(Withholding),
}

/// Why feeding is withheld: the source with the earliest deadline among those too close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Withholding {
    /// The source.
    pub source: SourceId,
    /// Its name.
    pub name: String,
    /// Its deadline.
    pub deadline: Instant,
    /// When the multiplexer first withheld feeding in this stretch (continuously since).
    pub since: Instant,
    /// True when the deadline has passed (the lockspace is lost, not merely late).
    pub expired: bool,
}

/// One source as shown by [`Multiplexer::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceStatus {
    /// The source's id.
    pub id: SourceId,
    /// The source's name.
    pub name: String,
    /// Its current deadline.
    pub deadline: Instant,
    /// Time left until the deadline (zero when past).
    pub left: Duration,
    /// Past its deadline at some poll or refresh.
    pub expired: bool,
    /// Too close to its deadline to feed right now.
    pub withholding: bool,
}

/// A snapshot for `tenure status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MuxStatus {
    /// Every registered source, in registration order.
    pub sources: Vec<SourceStatus>,
    /// Present while feeding is withheld.
    pub withholding: Option<Withholding>,
}

/// The deadline multiplexer (see the module docs).
#[derive(Debug)]
pub struct Multiplexer {
    sources: Vec<Source>,
    sources_max: usize,
    test_interval: Duration,
    next_id: u64,
    withholding_since: Option<Instant>,
}

impl Multiplexer {
    /// A multiplexer that withholds feeding when a deadline is within `test_interval`, with
    /// room for `sources_max` sources (preallocated).
    pub fn new(test_interval: Duration, sources_max: usize) -> Self {
        assert!(!test_interval.is_zero(), "test interval must be positive");
        assert!(sources_max > 0, "a multiplexer needs room for a source");
        Self {
            sources: Vec::with_capacity(sources_max),
            sources_max,
            test_interval,
            next_id: 1,
            withholding_since: None,
        }
    }

    /// The test interval: the feeder must call [`Multiplexer::poll_feed`] at least this often.
    pub fn test_interval(&self) -> Duration {
        self.test_interval
    }

    /// Registers a source whose renewal deadline is `deadline`.
    pub fn add(&mut self, name: &str, deadline: Instant) -> Result<SourceId, MuxError> {
        if name.len() > NAME_MAX_BYTES {
            return Err(MuxError::NameTooLong { len: name.len() });
        }
        if self.sources.len() >= self.sources_max {
            return Err(MuxError::Full {
                max: self.sources_max,
            });
        }
        let id = SourceId(self.next_id);
        self.next_id += 1;
        self.sources.push(Source {
            id,
            name: name.to_owned(),
            deadline,
            expired: false,
        });
        Ok(id)
    }

    /// Moves a source's deadline (after a good renewal). Refused once the old deadline has
    /// passed at `now` — the lockspace is lost and stays lost.
    pub fn refresh(
        &mut self,
        id: SourceId,
        now: Instant,
        deadline: Instant,
    ) -> Result<(), MuxError> {
        let src = self
            .sources
            .iter_mut()
            .find(|s| s.id == id)
            .ok_or(MuxError::UnknownSource(id))?;
        if src.expired || src.deadline <= now {
            src.expired = true;
            return Err(MuxError::Expired {
                name: src.name.clone(),
                late: now.saturating_duration_since(src.deadline),
            });
        }
        src.deadline = deadline;
        Ok(())
    }

    /// Removes a source cleanly: its lockspace was left, or it was lost and every holder of
    /// its leases is dead. Returns the removed source's name.
    pub fn remove(&mut self, id: SourceId) -> Result<String, MuxError> {
        let at = self
            .sources
            .iter()
            .position(|s| s.id == id)
            .ok_or(MuxError::UnknownSource(id))?;
        Ok(self.sources.remove(at).name)
    }

    /// Number of registered sources.
    pub fn len(&self) -> usize {
        self.sources.len()
    }

    /// No source is registered.
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// Decides whether the device may be fed at `now`; marks sources past their deadline as
    /// expired. Call at least once per test interval.
    pub fn poll_feed(&mut self, now: Instant) -> FeedDecision {
        let limit = now + self.test_interval;
        let mut worst: Option<&mut Source> = None;
        for s in self.sources.iter_mut() {
            if s.deadline <= now {
                s.expired = true;
            }
            if s.expired || s.deadline <= limit {
                match &worst {
                    Some(w) if w.deadline <= s.deadline => {}
                    _ => worst = Some(s),
                }
            }
        }
        match worst {
            None => {
                self.withholding_since = None;
                FeedDecision::Feed
            }
            Some(w) => {
                let since = *self.withholding_since.get_or_insert(now);
                FeedDecision::Withhold(Withholding {
                    source: w.id,
                    name: w.name.clone(),
                    deadline: w.deadline,
                    since,
                    expired: w.expired,
                })
            }
        }
    }

    /// The latest instant by which [`Multiplexer::poll_feed`] must run again.
    pub fn poll_timeout(&self, now: Instant) -> Instant {
        now + self.test_interval
    }

    /// A snapshot of every source at `now` (does not change state).
    pub fn status(&self, now: Instant) -> MuxStatus {
        let limit = now + self.test_interval;
        let sources: Vec<SourceStatus> = self
            .sources
            .iter()
            .map(|s| SourceStatus {
                id: s.id,
                name: s.name.clone(),
                deadline: s.deadline,
                left: s.deadline.saturating_duration_since(now),
                expired: s.expired || s.deadline <= now,
                withholding: s.expired || s.deadline <= limit,
            })
            .collect();
        let withholding = sources
            .iter()
            .filter(|s| s.withholding)
            .min_by_key(|s| s.deadline)
            .map(|s| Withholding {
                source: s.id,
                name: s.name.clone(),
                deadline: s.deadline,
                since: self.withholding_since.unwrap_or(now),
                expired: s.expired,
            });
        MuxStatus {
            sources,
            withholding,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn feeds_while_every_deadline_is_beyond_one_test_interval() {
        let t0 = Instant::now();
        let mut m = Multiplexer::new(secs(1), 4);
        assert_eq!(m.poll_feed(t0), FeedDecision::Feed, "no source: feed");
        let a = m.add("a", t0 + secs(10)).unwrap();
        let b = m.add("b", t0 + secs(5)).unwrap();
        assert_eq!(m.poll_feed(t0 + secs(3)), FeedDecision::Feed);
        // b is within one interval of its deadline at t0+4: withhold, naming b.
        match m.poll_feed(t0 + secs(4)) {
            FeedDecision::Withhold(w) => {
                assert_eq!(w.source, b);
                assert_eq!(w.name, "b");
                assert_eq!(w.since, t0 + secs(4));
                assert!(!w.expired);
            }
            other => panic!("expected withhold, got {other:?}"),
        }
        // A renewal of b before its deadline resumes feeding.
        m.refresh(b, t0 + secs(4), t0 + secs(12)).unwrap();
        assert_eq!(m.poll_feed(t0 + secs(4)), FeedDecision::Feed);
        let st = m.status(t0 + secs(9));
        assert_eq!(st.withholding.as_ref().map(|w| w.source), Some(a));
        assert_eq!(st.sources.len(), 2);
        assert_eq!(st.sources[0].left, secs(1));
    }

    #[test]
    fn an_expired_source_never_feeds_again_until_removed() {
        let t0 = Instant::now();
        let mut m = Multiplexer::new(secs(1), 2);
        let a = m.add("lost", t0 + secs(2)).unwrap();
        let keep = m.add("fine", t0 + secs(100)).unwrap();
        let first = match m.poll_feed(t0 + secs(3)) {
            FeedDecision::Withhold(w) => w,
            other => panic!("{other:?}"),
        };
        assert!(first.expired);
        let err = m.refresh(a, t0 + secs(3), t0 + secs(50)).unwrap_err();
        assert!(matches!(err, MuxError::Expired { late, .. } if late == secs(1)));
        // Still withheld, and `since` keeps the start of the stretch.
        match m.poll_feed(t0 + secs(5)) {
            FeedDecision::Withhold(w) => {
                assert_eq!(w.source, a);
                assert_eq!(w.since, t0 + secs(3));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(m.remove(a).unwrap(), "lost");
        assert_eq!(m.poll_feed(t0 + secs(6)), FeedDecision::Feed);
        assert!(m.refresh(a, t0, t0).is_err(), "removed id is unknown");
        m.refresh(keep, t0 + secs(6), t0 + secs(200)).unwrap();
    }

    #[test]
    fn a_refresh_that_arrives_after_the_deadline_is_refused_even_without_a_poll() {
        let t0 = Instant::now();
        let mut m = Multiplexer::new(secs(1), 1);
        let a = m.add("a", t0 + secs(2)).unwrap();
        assert!(matches!(
            m.refresh(a, t0 + secs(2), t0 + secs(9)),
            Err(MuxError::Expired { .. })
        ));
        assert!(matches!(m.poll_feed(t0 + secs(2)), FeedDecision::Withhold(w) if w.expired));
    }

    #[test]
    fn limits_are_typed_errors() {
        let t0 = Instant::now();
        let mut m = Multiplexer::new(secs(1), 1);
        m.add("a", t0).unwrap();
        assert_eq!(m.add("b", t0), Err(MuxError::Full { max: 1 }));
        let long = "x".repeat(NAME_MAX_BYTES + 1);
        assert!(matches!(
            Multiplexer::new(secs(1), 2).add(&long, t0),
            Err(MuxError::NameTooLong { .. })
        ));
    }

    /// The promise in the module docs: a feeder polling once per interval never feeds at or
    /// after `deadline - interval`, so a device with fire timeout W fires by deadline + W.
    #[test]
    fn last_feed_is_before_deadline_minus_interval_for_any_poll_phase() {
        let interval = Duration::from_millis(1000);
        for phase_ms in (0..1000).step_by(37) {
            let t0 = Instant::now();
            let mut m = Multiplexer::new(interval, 1);
            let deadline = t0 + Duration::from_millis(10_000);
            m.add("a", deadline).unwrap();
            let mut now = t0 + Duration::from_millis(phase_ms);
            let mut last_feed = None;
            while now < deadline + interval {
                if m.poll_feed(now) == FeedDecision::Feed {
                    last_feed = Some(now);
                }
                now += interval;
            }
            let last = last_feed.expect("fed at least once");
            assert!(last + interval < deadline, "phase {phase_ms}");
        }
    }
}
