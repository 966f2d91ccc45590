//! Blocking drivers for one acquire or release over an engine (direct use, tests and tools;
//! the daemon drives the machines from its reactor).

use super::*;
use crate::clock::Clock;
use crate::io::drive::complete_on;
use crate::io::{DiskId, IoBackend, IoError, IoKind};
use crate::paxos::disks::{DiskIo, Issued, Majority, PaxosMachine, Pumped};

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
    let m = PaxosAcquire::new(cfg, clock.now());
    run_acquire(backend, clock, disk, m, owner_status).map(|(r, _)| r)
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
    let m = PaxosAcquire::new_cached(cfg, cache, clock.now());
    run_acquire(backend, clock, disk, m, owner_status).map(|(r, _)| r)
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
    let m = PaxosAcquire::convert_to_exclusive(cfg, held, clock.now());
    let (r, m) = run_acquire(backend, clock, disk, m, owner_status)?;
    Ok(r.map_err(|e| {
        let kept = m.map_or_else(|| held.clone(), |m| m.shared_hold_after_failure(held));
        (e, kept)
    }))
}

/// A machine's result, and the machine (absent when it could not be set up).
type Ran<M> = (Result<<M as PaxosMachine>::Output, PaxosError>, Option<M>);

/// Runs a machine to its end over one disk, through the one driver ([`Majority::pump`]),
/// each I/O performed to completion; gives the machine back with its result.
fn run<M: PaxosMachine>(
    backend: &mut dyn IoBackend,
    clock: &dyn Clock,
    disk: DiskId,
    m: M,
    cfg: &PaxosConfig,
    owner_status: &mut dyn FnMut(u64, u64) -> (HostStatus, bool),
) -> Result<Ran<M>, IoError> {
    let mut maj = match Majority::new(m, cfg, vec![cfg.area_offset]) {
        Ok(maj) => maj,
        Err(e) => return Ok((Err(e), None)),
    };
    loop {
        let mut failed: Option<IoError> = None;
        let pumped = maj.pump(
            &mut || clock.now(),
            &mut |dio: DiskIo, data: &[u8], deadline: Time| {
                let mut buf = Vec::new();
                match perform(backend, clock, disk, dio.io, data, deadline, &mut buf) {
                    Ok(outcome) => Issued::Completed(outcome, buf),
                    Err(e) => {
                        failed = Some(e);
                        Issued::Refused(IoOutcome::Failed { errno: libc::EIO })
                    }
                }
            },
            &mut |host, generation, _| owner_status(host, generation),
        );
        if let Some(e) = failed {
            return Err(e);
        }
        match pumped {
            Pumped::Done(r) => return Ok((r, Some(maj.into_machine()))),
            Pumped::Until(t) => {
                let now = clock.now();
                if t > now {
                    backend.wait(now, t)?;
                }
            }
            // Every I/O completes inside `perform`: nothing can be in flight or deferred here.
            Pumped::Io | Pumped::Room(_) | Pumped::Stalled => {
                return Ok((Err(PaxosError::Stalled("blocking driver")), None))
            }
        }
    }
}

fn run_acquire(
    backend: &mut dyn IoBackend,
    clock: &dyn Clock,
    disk: DiskId,
    m: PaxosAcquire,
    owner_status: &mut dyn FnMut(u64, u64) -> (HostStatus, bool),
) -> Result<Ran<PaxosAcquire>, IoError> {
    let cfg = m.config().clone();
    run(backend, clock, disk, m, &cfg, owner_status)
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
    let m = PaxosRelease::new(cfg, held, clock.now());
    let (r, m) = drive_release(backend, clock, disk, m)?;
    Ok(r.map(|()| m.and_then(|m| m.cache())))
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
        Ok(m) => drive_release(backend, clock, disk, m).map(|(r, _)| r),
        Err(e) => Ok(Err(e)),
    }
}

fn drive_release(
    backend: &mut dyn IoBackend,
    clock: &dyn Clock,
    disk: DiskId,
    m: PaxosRelease,
) -> Result<Ran<PaxosRelease>, IoError> {
    let cfg = m.config().clone();
    run(backend, clock, disk, m, &cfg, &mut |_, _| {
        (HostStatus::Free, false)
    })
}
