//! Delta leases on real devices, io_timeout 1: three hosts, each a thread with its own io_uring
//! engine and its own loop device over one backing file, join one tenure-formatted lockspace,
//! renew, and see each other LIVE; one stops (a crash: no release) and the other two see it
//! FAIL, then DEAD, on time and never early.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tenure_core::clock::{MonotonicClock, Time};
use tenure_core::delta::{DeltaConfig, HostStatus};
use tenure_core::dev::{Access, Device};
use tenure_core::io::{open_backend, BackendKind, DiskId, EngineConfig};
use tenure_core::lockspace::{LockspaceSet, LockspaceState};
use tenure_core::timeouts::Timeouts;
use tenure_format::{Geometry, Name};
use tenure_tests::{loop_devices_available, tenure_ok, BackingFile, LoopDevice};

const T: u16 = 1;
/// The watchdog fire timeout of this test's cluster (short, so DEAD comes within the test).
const W: u32 = 10;

/// What each host thread reports: for each other host id, (time, status) whenever it changes.
type Observations = Arc<Mutex<Vec<Vec<(u64, Time, HostStatus)>>>>;

fn host(
    dev: &LoopDevice,
    host_id: u64,
    stop: Arc<AtomicBool>,
    obs: Observations,
    joined: Arc<Mutex<Vec<Option<Time>>>>,
) {
    let clock = MonotonicClock;
    let config = EngineConfig {
        ring_entries: 16,
        buffer_classes: vec![(512, 16), (1 << 20, 4)],
        sync_workers: 1,
    };
    let device = Device::open(dev.path(), Access::ReadWrite).expect("open");
    let (backend, _) = open_backend(vec![device], &config, BackendKind::Uring).expect("engine");
    let mut set = LockspaceSet::new(backend);
    let cfg = DeltaConfig {
        space_name: Name::new("REAL").expect("name"),
        host_id,
        host_name: Name::new(&format!("real-host-{host_id}")).expect("name"),
        geometry: Geometry::LEGACY_512,
        area_offset: 0,
        timeouts: Timeouts::new(T, W),
    };
    let ls = set.add(cfg, DiskId(0)).expect("add");
    set.join(ls, clock.now()).expect("join");
    let mut last: Vec<Option<HostStatus>> = vec![None; 4];
    while !stop.load(Ordering::SeqCst) {
        let now = clock.now();
        set.step(now).expect("step");
        if let Some(LockspaceState::Joined { .. }) = set.state(ls) {
            let mut j = joined.lock().expect("lock");
            j[host_id as usize].get_or_insert(now);
        }
        for other in 1..=3u64 {
            let st = set.host_status(ls, other, now);
            if last[other as usize] != Some(st) {
                last[other as usize] = Some(st);
                obs.lock().expect("lock")[host_id as usize].push((other, now, st));
            }
        }
        set.wait(now, now.saturating_add(Duration::from_millis(20)))
            .expect("wait");
    }
    // A crash: the thread ends without leaving; the lease stops being renewed.
}

fn first(obs: &Observations, observer: u64, target: u64, status: HostStatus) -> Option<Time> {
    obs.lock().expect("lock")[observer as usize]
        .iter()
        .find(|(o, _, s)| *o == target && *s == status)
        .map(|(_, t, _)| *t)
}

#[test]
fn three_hosts_join_see_each_other_and_a_stopped_host_fails_then_dies_on_time() {
    if !loop_devices_available() {
        return;
    }
    let t = Timeouts::new(T, W);
    let file = BackingFile::new(4 << 20);
    let devs: Vec<LoopDevice> = (0..3)
        .map(|_| LoopDevice::attach(file.path(), 512))
        .collect();
    tenure_ok(&[
        "lockspace",
        "init",
        &format!("REAL:0:{}:0", devs[0].path_str()),
        "--io-timeout",
        "1",
    ]);
    let obs: Observations = Arc::new(Mutex::new(vec![Vec::new(); 4]));
    let joined = Arc::new(Mutex::new(vec![None; 4]));
    let stops: Vec<Arc<AtomicBool>> = (0..3).map(|_| Arc::new(AtomicBool::new(false))).collect();
    let start = MonotonicClock.now();
    std::thread::scope(|s| {
        for (i, dev) in devs.iter().enumerate() {
            let (stop, obs, joined) =
                (Arc::clone(&stops[i]), Arc::clone(&obs), Arc::clone(&joined));
            s.spawn(move || host(dev, i as u64 + 1, stop, obs, joined));
        }
        let stop_all = || stops.iter().for_each(|s| s.store(true, Ordering::SeqCst));
        // Join (2T) and a few renewals.
        std::thread::sleep(Duration::from_secs(6));
        let now = MonotonicClock.now();
        let check = std::panic::catch_unwind(|| {
            for h in 1..=3u64 {
                let j = joined.lock().expect("lock")[h as usize]
                    .unwrap_or_else(|| panic!("host {h} did not join"));
                let took = j.saturating_since(start);
                assert!(
                    took >= Duration::from_secs(2) && took < Duration::from_millis(2500),
                    "host {h} joined after {took:?}"
                );
                for other in 1..=3u64 {
                    let last = obs.lock().expect("lock")[h as usize]
                        .iter()
                        .rev()
                        .find(|(o, _, _)| *o == other)
                        .map(|(_, _, s)| *s);
                    assert_eq!(
                        last,
                        Some(HostStatus::Live),
                        "host {h} sees host {other} at {now:?}"
                    );
                }
            }
        });
        if let Err(e) = check {
            stop_all();
            std::panic::resume_unwind(e);
        }
        // Host 3 crashes.
        stops[2].store(true, Ordering::SeqCst);
        let stopped = MonotonicClock.now();
        let limit =
            stopped.saturating_add(t.host_dead() + t.renewal_interval() + Duration::from_secs(3));
        while MonotonicClock.now() < limit
            && (1..=2).any(|o| first(&obs, o, 3, HostStatus::Dead).is_none())
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        stop_all();
        // Host 3's last renewal landed before `stopped`, and at most 2T + T before it.
        let last_renewal_earliest = t.renewal_interval() + t.io();
        for o in 1..=2u64 {
            let fail = first(&obs, o, 3, HostStatus::Fail)
                .unwrap_or_else(|| panic!("host {o} never saw host 3 FAIL"));
            let dead = first(&obs, o, 3, HostStatus::Dead)
                .unwrap_or_else(|| panic!("host {o} never saw host 3 DEAD"));
            let (f, d) = (
                fail.saturating_since(stopped),
                dead.saturating_since(stopped),
            );
            eprintln!("host {o} saw host 3 FAIL at +{f:?} and DEAD at +{d:?} after it stopped (8T = {:?}, 8T+W = {:?})", t.renewal_fail(), t.host_dead());
            assert!(
                f + last_renewal_earliest >= t.renewal_fail(),
                "host {o}: FAIL too early (+{f:?})"
            );
            assert!(
                d + last_renewal_earliest >= t.host_dead(),
                "host {o}: DEAD too early (+{d:?})"
            );
            assert!(
                f <= t.renewal_fail() + t.renewal_interval() + t.io(),
                "host {o}: FAIL late (+{f:?})"
            );
            assert!(
                d <= t.host_dead() + t.renewal_interval() + t.io(),
                "host {o}: DEAD late (+{d:?})"
            );
        }
    });
}
