//! Time as protocol code sees it: [`Time`], nanoseconds on a monotonic clock. Only
//! [`MonotonicClock`] reads the real clock (CLOCK_MONOTONIC); the simulator makes its own
//! `Time` values, so protocol code cannot tell the two apart.

use std::time::Duration;

use serde::Serialize;

/// A point on a monotonic clock, in nanoseconds since an arbitrary origin.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Time(u64);

impl Time {
    /// The origin.
    pub const ZERO: Time = Time(0);

    /// From nanoseconds since the origin.
    pub const fn from_nanos(ns: u64) -> Self {
        Time(ns)
    }

    /// Nanoseconds since the origin.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// Whole seconds since the origin (what sanlock writes as a timestamp).
    pub const fn as_secs(self) -> u64 {
        self.0 / 1_000_000_000
    }

    /// `self + d`, saturating at the end of time.
    pub fn saturating_add(self, d: Duration) -> Time {
        Time(
            self.0
                .saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        )
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Time) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

/// A source of [`Time`]: the real monotonic clock, or a simulated one.
pub trait Clock {
    /// The current time.
    fn now(&self) -> Time;
}

/// The real monotonic clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct MonotonicClock;

impl Clock for MonotonicClock {
    fn now(&self) -> Time {
        MonotonicClock::now(*self)
    }
}

impl MonotonicClock {
    /// CLOCK_MONOTONIC now.
    pub fn now(self) -> Time {
        // CLOCK_MONOTONIC cannot fail on Linux with a valid clock id; a failure would mean a
        // broken kernel, where aborting (and being fenced) is the safe reaction.
        let ts =
            nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
        let ns = u64::try_from(ts.tv_sec()).unwrap_or(0) * 1_000_000_000
            + u64::try_from(ts.tv_nsec()).unwrap_or(0);
        Time(ns)
    }
}

/// Simulated time, shared between a simulator and its driver (cloning shares the clock).
/// It only moves when told to.
#[derive(Clone, Debug, Default)]
pub struct SimClock(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl SimClock {
    /// A clock at `start`.
    pub fn new(start: Time) -> Self {
        SimClock(std::sync::Arc::new(std::sync::atomic::AtomicU64::new(
            start.as_nanos(),
        )))
    }

    /// Moves the clock forward to `t` (never backwards).
    pub fn advance_to(&self, t: Time) {
        self.0
            .fetch_max(t.as_nanos(), std::sync::atomic::Ordering::SeqCst);
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        let t = self.now().saturating_add(d);
        self.advance_to(t);
    }
}

impl Clock for SimClock {
    fn now(&self) -> Time {
        Time(self.0.load(std::sync::atomic::Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_and_monotonicity() {
        let t = Time::from_nanos(1_500_000_000);
        assert_eq!(t.as_secs(), 1);
        assert_eq!(t.saturating_add(Duration::from_millis(500)).as_secs(), 2);
        assert_eq!(Time::ZERO.saturating_since(t), Duration::ZERO);
        let a = MonotonicClock.now();
        let b = MonotonicClock.now();
        assert!(b >= a);
    }
}
