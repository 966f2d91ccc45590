//! A minimal blocking driver over an [`IoBackend`]: flush, then poll and wait until the
//! wanted number of completions arrived. For direct commands and tests; the daemon's reactor
//! drives the backend itself.

use std::time::Duration;

use crate::clock::{Clock, MonotonicClock, Time};
use crate::io::{Completion, IoBackend, IoError};

/// Longest single wait, so that deadlines are noticed promptly even by backends whose wait
/// cannot be woken by a deadline.
const WAIT_SLICE: Duration = Duration::from_millis(50);

/// Runs until `want` completions (timeouts included) have been collected, on the real clock.
pub fn complete(backend: &mut dyn IoBackend, want: usize) -> Result<Vec<Completion>, IoError> {
    complete_on(backend, &MonotonicClock, want)
}

/// [`complete`] on any clock (the simulator's `wait` advances its clock).
pub fn complete_on(
    backend: &mut dyn IoBackend,
    clock: &dyn Clock,
    want: usize,
) -> Result<Vec<Completion>, IoError> {
    let mut out = Vec::with_capacity(want);
    // No separate flush: `wait` submits and waits in one call where the backend can.
    loop {
        let now = clock.now();
        backend.poll(now, &mut out)?;
        if out.len() >= want {
            return Ok(out);
        }
        let until = backend
            .next_deadline()
            .map_or(now.saturating_add(WAIT_SLICE), |d| {
                d.min(now.saturating_add(WAIT_SLICE))
            });
        backend.wait(now, until)?;
    }
}

/// A deadline `d` from now on the real clock.
pub fn deadline_in(d: Duration) -> Time {
    MonotonicClock.now().saturating_add(d)
}
