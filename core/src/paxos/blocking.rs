//! Blocking drivers for one acquire or release over an engine (direct use, tests and tools;
//! the daemon drives the machines from its reactor).

use super::*;
use crate::clock::Clock;
use crate::io::drive::complete_on;
use crate::io::{DiskId, IoBackend, IoError, IoKind};

/// One I/O of a machine, performed to completion: (combined outcome, read data).
fn perform(
    backend: &mut dyn IoBackend,
    clock: &dyn Clock,
    disk: DiskId,
    io: PaxosIo,
    data: &[u8],
    deadline: Time,
    out: &mut Vec<u8>,
) -> Result<IoOutcome, IoError> {
    let started = start_io(backend, disk, io, data, deadline);
    let Ok((w, r)) = started else {
        return Ok(IoOutcome::Failed { errno: libc::EBUSY });
    };
    let n = usize::from(w.is_some()) + usize::from(r.is_some());
    let done = complete_on(backend, clock, n)?;
    let mut outcome = IoOutcome::Done;
    for c in &done {
        if c.outcome != IoOutcome::Done && outcome == IoOutcome::Done {
            outcome = c.outcome;
        }
        if c.kind == IoKind::Read {
            out.clear();
            if let Some(d) = backend.read_data(c.id) {
                out.extend_from_slice(d);
            }
            backend.release(c.id);
        }
    }
    Ok(outcome)
}

/// Runs an acquire to its end. `owner_status(host_id, generation)` answers the owner's
/// delta-lease status and whether it still has that generation.
pub fn acquire(
    backend: &mut dyn IoBackend,
    clock: &dyn Clock,
    disk: DiskId,
    cfg: PaxosConfig,
    owner_status: &mut dyn FnMut(u64, u64) -> (HostStatus, bool),
) -> Result<Result<Acquired, PaxosError>, IoError> {
    let mut m = PaxosAcquire::new(cfg, clock.now());
    run_acquire(backend, clock, disk, &mut m, owner_status)
}

/// Runs an acquire that starts from what our last release of the lease left (see
/// [`PaxosAcquire::new_cached`]) to its end.
pub fn acquire_cached(
    backend: &mut dyn IoBackend,
    clock: &dyn Clock,
    disk: DiskId,
    cfg: PaxosConfig,
    cache: &BallotCache,
    owner_status: &mut dyn FnMut(u64, u64) -> (HostStatus, bool),
) -> Result<Result<Acquired, PaxosError>, IoError> {
    let mut m = PaxosAcquire::new_cached(cfg, cache, clock.now());
    run_acquire(backend, clock, disk, &mut m, owner_status)
}

/// Runs a conversion of the shared hold `held` to exclusive to its end: Ok(exclusive
/// hold), or Err with why and the shared hold to keep (see
/// [`PaxosAcquire::shared_hold_after_failure`]).
pub fn convert_to_exclusive(
    backend: &mut dyn IoBackend,
    clock: &dyn Clock,
    disk: DiskId,
    cfg: PaxosConfig,
    held: &Acquired,
    owner_status: &mut dyn FnMut(u64, u64) -> (HostStatus, bool),
) -> Result<Result<Acquired, (PaxosError, Acquired)>, IoError> {
    let mut m = PaxosAcquire::convert_to_exclusive(cfg, held, clock.now());
    let r = run_acquire(backend, clock, disk, &mut m, owner_status)?;
    Ok(r.map_err(|e| (e, m.shared_hold_after_failure(held))))
}

fn run_acquire(
    backend: &mut dyn IoBackend,
    clock: &dyn Clock,
    disk: DiskId,
    m: &mut PaxosAcquire,
    owner_status: &mut dyn FnMut(u64, u64) -> (HostStatus, bool),
) -> Result<Result<Acquired, PaxosError>, IoError> {
    let mut buf = Vec::new();
    loop {
        if let Some(r) = m.poll_result() {
            return Ok(r);
        }
        if let Some(io) = m.poll_io() {
            let data = m.write_data().to_vec();
            let outcome = perform(backend, clock, disk, io, &data, m.io_deadline(), &mut buf)?;
            m.handle_io(clock.now(), outcome, &buf);
            continue;
        }
        if let Some((host, generation)) = m.poll_owner_query() {
            let (status, same) = owner_status(host, generation);
            m.handle_owner_status(clock.now(), status, same);
            continue;
        }
        if let Some(t) = m.poll_timeout() {
            let now = clock.now();
            if t > now {
                backend.wait(now, t)?;
            }
            m.handle_timeout(clock.now());
        }
    }
}

/// Runs a release to its end.
pub fn release(
    backend: &mut dyn IoBackend,
    clock: &dyn Clock,
    disk: DiskId,
    cfg: PaxosConfig,
    held: Acquired,
) -> Result<Result<(), PaxosError>, IoError> {
    release_keeping_cache(backend, clock, disk, cfg, held).map(|r| r.map(|_| ()))
}

/// Runs a release to its end, returning what a next acquire of the lease may start from
/// (None when another host had written the leader, or for a shared hold).
pub fn release_keeping_cache(
    backend: &mut dyn IoBackend,
    clock: &dyn Clock,
    disk: DiskId,
    cfg: PaxosConfig,
    held: Acquired,
) -> Result<Result<Option<BallotCache>, PaxosError>, IoError> {
    let mut m = PaxosRelease::new(cfg, held, clock.now());
    let r = drive_release(backend, clock, disk, &mut m)?;
    Ok(r.map(|()| m.cache()))
}

/// Runs a release that first writes `lvb` as the lock value block.
pub fn release_with_lvb(
    backend: &mut dyn IoBackend,
    clock: &dyn Clock,
    disk: DiskId,
    cfg: PaxosConfig,
    held: Acquired,
    lvb: &[u8],
) -> Result<Result<(), PaxosError>, IoError> {
    match PaxosRelease::with_lvb(cfg, held, lvb, clock.now()) {
        Ok(mut m) => drive_release(backend, clock, disk, &mut m),
        Err(e) => Ok(Err(e)),
    }
}

fn drive_release(
    backend: &mut dyn IoBackend,
    clock: &dyn Clock,
    disk: DiskId,
    m: &mut PaxosRelease,
) -> Result<Result<(), PaxosError>, IoError> {
    let mut buf = Vec::new();
    loop {
        if let Some(r) = m.poll_result() {
            return Ok(r);
        }
        let Some(io) = m.poll_io() else {
            return Ok(Err(PaxosError::Stalled("release")));
        };
        let data = m.write_data().to_vec();
        let outcome = perform(backend, clock, disk, io, &data, m.io_deadline(), &mut buf)?;
        m.handle_io(clock.now(), outcome, &buf);
    }
}
