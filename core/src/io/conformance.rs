//! The test suite every real backend must pass, over any device (a file in unit tests, loop
//! devices in the tests crate). Each function panics with a message on failure.

use std::time::Duration;

use crate::clock::Clock;
use crate::io::drive::complete_on;
use crate::io::{DiskId, IoBackend, IoKind, IoOutcome, IoRequest, SubmitError};

fn req_at(clock: &dyn Clock, disk: DiskId, offset: u64, len: usize) -> IoRequest {
    IoRequest {
        disk,
        offset,
        len,
        deadline: clock.now().saturating_add(Duration::from_secs(10)),
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A write, then a read of the same sectors, returns the written bytes.
pub fn write_then_read(b: &mut dyn IoBackend, clock: &dyn Clock, disk: DiskId, align: usize) {
    let data = pattern(7, 4 * align);
    let w = b
        .start_write(req_at(clock, disk, 8 * align as u64, data.len()), &data)
        .expect("start write");
    let c = complete_on(b, clock, 1).expect("complete");
    assert_eq!(
        (c[0].id, c[0].kind, c[0].outcome),
        (w, IoKind::Write, IoOutcome::Done),
        "{c:?}"
    );
    let r = b
        .start_read(req_at(clock, disk, 8 * align as u64, data.len()))
        .expect("start read");
    let c = complete_on(b, clock, 1).expect("complete");
    assert_eq!((c[0].id, c[0].outcome), (r, IoOutcome::Done));
    assert_eq!(b.read_data(r).expect("data"), &data[..]);
    b.release(r);
    assert!(b.read_data(r).is_none(), "released read still readable");
    assert_eq!(b.in_flight(), 0);
}

/// A linked write→read: the read sees the write.
pub fn chain_reads_after_write(
    b: &mut dyn IoBackend,
    clock: &dyn Clock,
    disk: DiskId,
    align: usize,
) {
    for round in 0..8u8 {
        let data = pattern(round, align);
        let (w, r) = b
            .start_chain(
                req_at(clock, disk, 0, align),
                &data,
                req_at(clock, disk, 0, align),
            )
            .expect("chain");
        let c = complete_on(b, clock, 2).expect("complete");
        let wc = c.iter().find(|c| c.id == w).expect("write completion");
        let rc = c.iter().find(|c| c.id == r).expect("read completion");
        assert_eq!((wc.outcome, rc.outcome), (IoOutcome::Done, IoOutcome::Done));
        assert_eq!(
            b.read_data(r).expect("data"),
            &data[..],
            "round {round}: read did not see its write"
        );
        b.release(r);
    }
}

/// An unordered write + read pair (to different sectors): both complete, the write lands, the
/// read returns what was there; both are refused together when one cannot start.
pub fn pair_completes_both(b: &mut dyn IoBackend, clock: &dyn Clock, disk: DiskId, align: usize) {
    let before = pattern(40, align);
    let w0 = b
        .start_write(req_at(clock, disk, align as u64, align), &before)
        .expect("write");
    complete_on(b, clock, 1).expect("complete");
    let _ = w0;
    for round in 0..8u8 {
        let data = pattern(round, align);
        let (w, r) = b
            .start_pair(
                req_at(clock, disk, 0, align),
                &data,
                req_at(clock, disk, align as u64, align),
            )
            .expect("pair");
        let c = complete_on(b, clock, 2).expect("complete");
        let wc = c.iter().find(|c| c.id == w).expect("write completion");
        let rc = c.iter().find(|c| c.id == r).expect("read completion");
        assert_eq!((wc.outcome, rc.outcome), (IoOutcome::Done, IoOutcome::Done));
        assert_eq!(b.read_data(r).expect("data"), &before[..], "round {round}");
        b.release(r);
    }
    // The write landed: a plain read sees the last round's data.
    let r = b.start_read(req_at(clock, disk, 0, align)).expect("read");
    complete_on(b, clock, 1).expect("complete");
    assert_eq!(b.read_data(r).expect("data"), &pattern(7, align)[..]);
    b.release(r);
    // A pair whose read cannot start (past the end) queues nothing, its write included.
    let past = b.disk(disk).expect("disk").size_bytes;
    assert!(b
        .start_pair(
            req_at(clock, disk, 0, align),
            &pattern(9, align),
            req_at(clock, disk, past, align),
        )
        .is_err());
    assert_eq!(b.in_flight(), 0);
}

/// On a device opened read-only, the write of a chain fails and its read is canceled.
pub fn chain_read_canceled_when_write_fails(
    b: &mut dyn IoBackend,
    clock: &dyn Clock,
    read_only_disk: DiskId,
    align: usize,
) {
    let data = pattern(1, align);
    let (w, r) = b
        .start_chain(
            req_at(clock, read_only_disk, 0, align),
            &data,
            req_at(clock, read_only_disk, 0, align),
        )
        .expect("chain");
    let c = complete_on(b, clock, 2).expect("complete");
    let wc = c.iter().find(|c| c.id == w).expect("write completion");
    let rc = c.iter().find(|c| c.id == r).expect("read completion");
    assert!(
        matches!(wc.outcome, IoOutcome::Failed { errno: libc::EBADF }),
        "{wc:?}"
    );
    assert_eq!(rc.outcome, IoOutcome::Canceled);
    assert_eq!(b.in_flight(), 0);
}

/// Many independent operations in flight at once, submitted in one batch.
pub fn many_in_flight(
    b: &mut dyn IoBackend,
    clock: &dyn Clock,
    disk: DiskId,
    align: usize,
    n: usize,
) {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let data = pattern(i as u8, align);
        ids.push(
            b.start_write(req_at(clock, disk, (i * align) as u64, align), &data)
                .expect("start"),
        );
    }
    assert_eq!(b.in_flight(), n);
    let c = complete_on(b, clock, n).expect("complete");
    assert_eq!(c.len(), n);
    assert!(
        c.iter()
            .all(|c| c.outcome == IoOutcome::Done && ids.contains(&c.id)),
        "{c:?}"
    );
    for (i, id) in ids.iter_mut().enumerate() {
        *id = b
            .start_read(req_at(clock, disk, (i * align) as u64, align))
            .expect("start read");
    }
    complete_on(b, clock, n).expect("complete");
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            b.read_data(*id).expect("data"),
            &pattern(i as u8, align)[..],
            "sector {i}"
        );
        b.release(*id);
    }
}

/// Past the buffer arena or in-flight limit, starting fails with Full and nothing leaks.
pub fn full_is_typed_and_recovers(
    b: &mut dyn IoBackend,
    clock: &dyn Clock,
    disk: DiskId,
    align: usize,
) {
    let mut ids = Vec::new();
    let err = loop {
        match b.start_read(req_at(clock, disk, 0, align)) {
            Ok(id) => ids.push(id),
            Err(e) => break e,
        }
        assert!(ids.len() < 100_000, "no limit reached");
    };
    assert!(matches!(err, SubmitError::Full { .. }), "{err}");
    let c = complete_on(b, clock, ids.len()).expect("complete");
    for c in &c {
        b.release(c.id);
    }
    assert_eq!(b.in_flight(), 0);
    let id = b
        .start_read(req_at(clock, disk, 0, align))
        .expect("starts again after completions");
    complete_on(b, clock, 1).expect("complete");
    b.release(id);
}

/// Requests the engine must refuse before touching the device.
pub fn bad_requests_refused(
    b: &mut dyn IoBackend,
    clock: &dyn Clock,
    disk: DiskId,
    align: usize,
    size: u64,
) {
    let r = |o, l| IoRequest {
        disk,
        offset: o,
        len: l,
        deadline: clock.now().saturating_add(Duration::from_secs(1)),
    };
    assert!(matches!(
        b.start_read(r(1, align)),
        Err(SubmitError::Unaligned { .. })
    ));
    assert!(matches!(
        b.start_read(r(0, align + 1)),
        Err(SubmitError::Unaligned { .. })
    ));
    assert!(matches!(
        b.start_read(r(0, 0)),
        Err(SubmitError::Unaligned { .. })
    ));
    assert!(matches!(
        b.start_read(r(size, align)),
        Err(SubmitError::PastEnd { .. })
    ));
    assert!(matches!(
        b.start_read(IoRequest {
            disk: DiskId(99),
            ..r(0, align)
        }),
        Err(SubmitError::UnknownDisk(_))
    ));
    assert!(matches!(
        b.start_write(r(0, align), &[0u8; 3]),
        Err(SubmitError::DataLength { .. })
    ));
    assert_eq!(b.in_flight(), 0);
}
