//! The I/O engine on real kernels: both backends (io_uring and the sync fallback) pass the
//! conformance suite on loop devices with 512- and 4096-byte sectors; two loop devices over one
//! file see each other's writes; and on a stalled device (a FUSE file under a loop device) a
//! deadline fires on time, the buffer stays owned, the late completion is reaped, and nothing
//! is reused early.

use std::time::Duration;

use tenure_core::clock::MonotonicClock;
use tenure_core::dev::{Access, Device};
use tenure_core::io::drive::complete;
use tenure_core::io::{
    conformance, open_backend, BackendKind, DiskId, EngineConfig, IoBackend, IoOutcome, IoRequest,
    SubmitError,
};
use tenure_tests::{fuse_available, loop_devices_available, BackingFile, LoopDevice, StallFs};

const KINDS: [BackendKind; 2] = [BackendKind::Uring, BackendKind::Sync];

fn backend(
    devs: Vec<Device>,
    config: &EngineConfig,
    kind: BackendKind,
) -> Box<dyn IoBackend + Send> {
    let (b, choice) = open_backend(devs, config, kind).expect("backend");
    assert_eq!(choice.fallback_reason, None);
    b
}

#[test]
fn both_backends_pass_the_suite_on_loop_devices() {
    if !loop_devices_available() {
        return;
    }
    for ss in [512u32, 4096] {
        let file = BackingFile::new(16 << 20);
        let dev = LoopDevice::attach(file.path(), ss);
        for kind in KINDS {
            let config = EngineConfig {
                ring_entries: 32,
                buffer_classes: vec![(4096, 40), (1 << 20, 2)],
                sync_workers: 4,
            };
            let devs = vec![
                Device::open(dev.path(), Access::ReadWrite).expect("rw"),
                Device::open(dev.path(), Access::Read).expect("ro"),
            ];
            let mut b = backend(devs, &config, kind);
            let b = b.as_mut();
            let a = ss as usize;
            conformance::write_then_read(b, &MonotonicClock, DiskId(0), a);
            conformance::chain_reads_after_write(b, &MonotonicClock, DiskId(0), a);
            conformance::pair_completes_both(b, &MonotonicClock, DiskId(0), a);
            conformance::chain_read_canceled_when_write_fails(b, &MonotonicClock, DiskId(1), a);
            conformance::many_in_flight(b, &MonotonicClock, DiskId(0), a, 32);
            conformance::full_is_typed_and_recovers(b, &MonotonicClock, DiskId(0), a);
            conformance::bad_requests_refused(b, &MonotonicClock, DiskId(0), a, 16 << 20);
        }
    }
}

#[test]
fn two_loop_devices_over_one_file_see_each_others_writes() {
    if !loop_devices_available() {
        return;
    }
    let file = BackingFile::new(8 << 20);
    let (a, b) = (
        LoopDevice::attach(file.path(), 4096),
        LoopDevice::attach(file.path(), 4096),
    );
    for kind in KINDS {
        let config = EngineConfig {
            ring_entries: 8,
            buffer_classes: vec![(4096, 4)],
            sync_workers: 2,
        };
        let devs = vec![
            Device::open(a.path(), Access::ReadWrite).expect("a"),
            Device::open(b.path(), Access::ReadWrite).expect("b"),
        ];
        let mut eng = backend(devs, &config, kind);
        for round in 0..4u8 {
            let data = vec![round.wrapping_add(0x5a); 4096];
            let deadline = MonotonicClock.now().saturating_add(Duration::from_secs(5));
            let (from, to) = if round % 2 == 0 {
                (DiskId(0), DiskId(1))
            } else {
                (DiskId(1), DiskId(0))
            };
            eng.start_write(
                IoRequest {
                    disk: from,
                    offset: 4096,
                    len: 4096,
                    deadline,
                },
                &data,
            )
            .expect("write");
            assert_eq!(
                complete(eng.as_mut(), 1).expect("write")[0].outcome,
                IoOutcome::Done
            );
            let r = eng
                .start_read(IoRequest {
                    disk: to,
                    offset: 4096,
                    len: 4096,
                    deadline,
                })
                .expect("read");
            assert_eq!(
                complete(eng.as_mut(), 1).expect("read")[0].outcome,
                IoOutcome::Done
            );
            assert_eq!(
                eng.read_data(r).expect("data"),
                &data[..],
                "{kind:?} round {round}"
            );
            eng.release(r);
        }
    }
}

#[test]
fn stalled_device_deadline_fires_on_time_and_nothing_is_reused_early() {
    if !(loop_devices_available() && fuse_available()) {
        return;
    }
    for kind in KINDS {
        let fs = StallFs::start(4 << 20);
        let lun = LoopDevice::attach(&fs.lun(), 512);
        // One buffer only: while the device owns it, nothing else can start.
        let config = EngineConfig {
            ring_entries: 4,
            buffer_classes: vec![(4096, 1)],
            sync_workers: 2,
        };
        let mut eng = backend(
            vec![Device::open(lun.path(), Access::ReadWrite).expect("open")],
            &config,
            kind,
        );
        let clock = MonotonicClock;
        let req = |deadline| IoRequest {
            disk: DiskId(0),
            offset: 0,
            len: 512,
            deadline,
        };
        let old = vec![0xAA; 512];
        eng.start_write(
            req(clock.now().saturating_add(Duration::from_secs(5))),
            &old,
        )
        .expect("write");
        assert_eq!(
            complete(eng.as_mut(), 1).expect("complete")[0].outcome,
            IoOutcome::Done
        );

        fs.hang_writes(true);
        let new = vec![0xBB; 512];
        let deadline = clock.now().saturating_add(Duration::from_millis(300));
        let w = eng.start_write(req(deadline), &new).expect("write");
        let c = complete(eng.as_mut(), 1).expect("complete");
        let reported = clock.now();
        assert_eq!(
            (c[0].id, c[0].outcome),
            (w, IoOutcome::TimedOut),
            "{kind:?}"
        );
        assert!(c[0].may_land_later());
        assert!(
            reported >= deadline,
            "{kind:?}: reported before the deadline"
        );
        let late = reported.saturating_since(deadline);
        assert!(
            late < Duration::from_millis(200),
            "{kind:?}: deadline reported {late:?} late"
        );
        eprintln!("{kind:?}: timed-out write reported {late:?} after its deadline");
        // The device still owns the buffer: it counts as in flight and is not handed out.
        assert_eq!(eng.in_flight(), 1);
        let blocked = eng.start_read(req(clock.now().saturating_add(Duration::from_secs(5))));
        assert!(
            matches!(blocked, Err(SubmitError::Full { .. })),
            "{kind:?}: {blocked:?}"
        );
        // Let the device finish: the late completion is reaped silently.
        fs.hang_writes(false);
        let until = clock.now().saturating_add(Duration::from_secs(10));
        let mut reported_after = Vec::new();
        while eng.in_flight() > 0 && clock.now() < until {
            eng.poll(clock.now(), &mut reported_after).expect("poll");
            let now = clock.now();
            eng.wait(now, now.saturating_add(Duration::from_millis(20)))
                .expect("wait");
        }
        assert_eq!(eng.in_flight(), 0, "{kind:?}: late completion never reaped");
        assert!(
            reported_after.is_empty(),
            "{kind:?}: late completion was reported: {reported_after:?}"
        );
        // The timed-out write did land later.
        let r = eng
            .start_read(req(clock.now().saturating_add(Duration::from_secs(5))))
            .expect("read");
        assert_eq!(
            complete(eng.as_mut(), 1).expect("complete")[0].outcome,
            IoOutcome::Done
        );
        assert_eq!(
            eng.read_data(r).expect("data"),
            &new[..],
            "{kind:?}: the late write did not land"
        );
        eng.release(r);

        // EIO from the device: the write fails, and a chained read is canceled.
        fs.eio_writes(true);
        let d = clock.now().saturating_add(Duration::from_secs(5));
        let cfg_read = req(d);
        drop(eng);
        let config = EngineConfig {
            ring_entries: 4,
            buffer_classes: vec![(4096, 2)],
            sync_workers: 2,
        };
        let mut eng = backend(
            vec![Device::open(lun.path(), Access::ReadWrite).expect("open")],
            &config,
            kind,
        );
        let (w, r) = eng.start_chain(req(d), &old, cfg_read).expect("chain");
        let c = complete(eng.as_mut(), 2).expect("complete");
        let wc = c.iter().find(|c| c.id == w).expect("write");
        let rc = c.iter().find(|c| c.id == r).expect("read");
        assert_eq!(
            wc.outcome,
            IoOutcome::Failed { errno: libc::EIO },
            "{kind:?}"
        );
        assert_eq!(rc.outcome, IoOutcome::Canceled, "{kind:?}");
        fs.eio_writes(false);
    }
}
