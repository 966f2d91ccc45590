//! Every timing rule of spec/PROTOCOL.md, derived from the io_timeout `T` and the
//! cluster-wide watchdog fire timeout `W` (sanlock 3.8.5 fixes W at 60 s).
//!
//! | name | formula | T=10, W=60 |
//! |---|---|---|
//! | renewal interval | 2T | 20 s |
//! | renewal warning | 6T | 60 s |
//! | renewal fail (our lockspace is lost; recovery starts) | 8T | 80 s |
//! | host dead (others may take its leases) | 8T + W | 140 s |
//! | join delay, free slot or our own name | 2T (T recorded in the slot) | 20 s |
//! | join delay, slot last held by another name | max(8T + W, 8T), then 2T | 140 s + 20 s |
//! | kill grace | 40 s (15 if 30 ≤ W < 60, 0 if W < 30) unless set | 40 s |
//!
//! Worked timeline for a host whose last good renewal completed at t (T = 10, W = 60):
//! - t + 20 s: next renewal due; each renewal that succeeds moves t forward.
//! - t + 60 s: renewals have failed for 6T — warn.
//! - t + 80 s (8T): the lockspace is lost to us; holders are killed (kill path or SIGTERM for
//!   the kill grace, then SIGKILL every second); the watchdog is no longer fed for it.
//! - t + 140 s (8T + W) at the latest: the watchdog has fired if any holder survived; every other
//!   host, measuring on its own clock from the last change of our timestamp it observed (which is
//!   no earlier than t), may take our leases no earlier than this.
//!
//! Delays concerning another host use **that host's** T, as recorded in its delta lease.

use std::time::Duration;

use serde::Serialize;

/// sanlock's default io_timeout.
pub const IO_TIMEOUT_DEFAULT_S: u16 = 10;
/// sanlock 3.8.5's (fixed) watchdog fire timeout.
pub const WATCHDOG_FIRE_DEFAULT_S: u32 = 60;

/// The timing rules for one io_timeout and one watchdog fire timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Timeouts {
    /// T, seconds (at least 1).
    pub io_timeout_s: u16,
    /// W, seconds.
    pub watchdog_fire_s: u32,
}

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

impl Timeouts {
    /// Rules for `io_timeout_s` (T ≥ 1, asserted: config validation comes first) and W.
    pub fn new(io_timeout_s: u16, watchdog_fire_s: u32) -> Self {
        assert!(io_timeout_s >= 1, "io_timeout must be at least 1 s");
        Timeouts {
            io_timeout_s,
            watchdog_fire_s,
        }
    }

    fn t(&self) -> u64 {
        u64::from(self.io_timeout_s)
    }

    fn w(&self) -> u64 {
        u64::from(self.watchdog_fire_s)
    }

    /// The deadline of one I/O: T.
    pub fn io(&self) -> Duration {
        secs(self.t())
    }

    /// 2T between renewals.
    pub fn renewal_interval(&self) -> Duration {
        secs(2 * self.t())
    }

    /// 6T without a renewal: warn.
    pub fn renewal_warn(&self) -> Duration {
        secs(6 * self.t())
    }

    /// 8T without a renewal: our lockspace is lost.
    pub fn renewal_fail(&self) -> Duration {
        secs(8 * self.t())
    }

    /// 8T + W after the last observed change of a host's timestamp: it is dead.
    pub fn host_dead(&self) -> Duration {
        secs(8 * self.t() + self.w())
    }

    /// 2T: the wait after writing our slot before re-reading it (T recorded in the slot).
    pub fn join_delay_short(&self) -> Duration {
        secs(2 * self.t())
    }

    /// max(8T + W, 8T): the wait before taking a slot last held by another host name.
    pub fn join_delay_other_name(&self) -> Duration {
        secs((8 * self.t() + self.w()).max(8 * self.t()))
    }

    /// Graceful-kill period: 40 s, 15 s if 30 ≤ W < 60, 0 if W < 30.
    pub fn kill_grace(&self) -> Duration {
        match self.w() {
            w if w < 30 => Duration::ZERO,
            w if w < 60 => secs(15),
            _ => secs(40),
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts::new(IO_TIMEOUT_DEFAULT_S, WATCHDOG_FIRE_DEFAULT_S)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_table_defaults() {
        let t = Timeouts::default();
        assert_eq!(t.renewal_interval(), secs(20));
        assert_eq!(t.renewal_warn(), secs(60));
        assert_eq!(t.renewal_fail(), secs(80));
        assert_eq!(t.host_dead(), secs(140));
        assert_eq!(t.join_delay_short(), secs(20));
        assert_eq!(t.join_delay_other_name() + t.join_delay_short(), secs(160));
        assert_eq!(t.kill_grace(), secs(40));
        assert_eq!(Timeouts::new(10, 45).kill_grace(), secs(15));
        assert_eq!(Timeouts::new(10, 20).kill_grace(), Duration::ZERO);
    }

    #[test]
    fn relationships_hold_for_every_io_timeout() {
        for t in 1..=120u16 {
            for w in [0u32, 10, 30, 60, 120] {
                let x = Timeouts::new(t, w);
                assert!(x.io() < x.renewal_interval());
                assert!(x.renewal_interval() < x.renewal_warn());
                assert!(x.renewal_warn() < x.renewal_fail());
                assert!(x.renewal_fail() <= x.host_dead());
                // A host that lost its lockspace kills its holders before others may take over.
                assert!(x.renewal_fail() + x.kill_grace().min(secs(u64::from(w))) <= x.host_dead());
            }
        }
    }
}
