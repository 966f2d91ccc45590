//! Delta leases mixed with real sanlock 3.8.5 in one lockspace: sanlock is host 1, tenure host
//! 2 (each through its own loop device over one file). sanlock sees tenure LIVE with the right
//! generation and tenure sees sanlock LIVE; a second joiner of a host id already in use fails
//! with "host id busy" on either side; tenure's release is seen by sanlock as FREE.

use std::time::{Duration, Instant};

use tenure_core::delta::{DeltaConfig, DeltaError, HostStatus};
use tenure_core::lockspace::LockspaceState;
use tenure_core::timeouts::Timeouts;
use tenure_format::{Geometry, Name};
use tenure_tests::{
    sanlock_available, sanlock_lock, tenure_ok, BackingFile, LockspaceThread, LoopDevice,
    SanlockDaemon,
};

const T: u16 = 1;
/// sanlock 3.8.5's fixed watchdog fire timeout: every host of a lockspace must use the same.
const W: u32 = 60;

fn tenure_host<'s>(
    s: &'s std::thread::Scope<'s, '_>,
    dev: &'s LoopDevice,
    host_id: u64,
    name: &str,
) -> LockspaceThread {
    let cfg = DeltaConfig {
        space_name: Name::new("MIX").expect("name"),
        host_id,
        host_name: Name::new(name).expect("name"),
        geometry: Geometry::LEGACY_512,
        area_offset: 0,
        timeouts: Timeouts::new(T, W),
    };
    LockspaceThread::spawn(s, dev.path(), cfg)
}

/// (generation, flags) of `host_id` as sanlock's get_hosts reports it.
fn sanlock_sees(daemon: &SanlockDaemon, host_id: u64) -> (u64, u64) {
    let out = daemon.python(&format!(
        "import sanlock\nh = sanlock.get_hosts(b'MIX', {host_id})\nprint(h[0]['generation'], h[0]['flags']) if h else print(0, 0)"
    ));
    let v: Vec<u64> = out
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    (v[0], v[1])
}

#[test]
fn sanlock_and_tenure_share_a_lockspace() {
    if !sanlock_available() {
        return;
    }
    let _serial = sanlock_lock();
    let file = BackingFile::new(4 << 20);
    let (dev_sanlock, dev_tenure, dev_tenure2, dev_sanlock2) = (
        LoopDevice::attach(file.path(), 512),
        LoopDevice::attach(file.path(), 512),
        LoopDevice::attach(file.path(), 512),
        LoopDevice::attach(file.path(), 512),
    );
    tenure_ok(&[
        "lockspace",
        "init",
        &format!("MIX:0:{}:0", dev_tenure.path_str()),
        "--io-timeout",
        "1",
    ]);
    let daemon = SanlockDaemon::start();
    let second = SanlockDaemon::start();
    daemon.python(&format!(
        "import sanlock; sanlock.add_lockspace(b'MIX', 1, '{}', 0, iotimeout=1)",
        dev_sanlock.path_str()
    ));
    std::thread::scope(|s| {
        let tenure = tenure_host(s, &dev_tenure, 2, "tenure-host-2");
        let joined = tenure.wait_for("tenure joins host id 2", Duration::from_secs(10), |s| {
            s.generation().is_some()
        });
        let generation = joined.generation().expect("joined");
        // Each side sees the other LIVE (after two renewals, so a change was observed).
        tenure.wait_for(
            "tenure sees sanlock's host 1 LIVE",
            Duration::from_secs(10),
            |s| s.host(1).0 == HostStatus::Live,
        );
        let end = Instant::now() + Duration::from_secs(15);
        loop {
            let (g, flags) = sanlock_sees(&daemon, 2);
            if (g, flags) == (generation, 3) {
                break;
            }
            assert!(
                Instant::now() < end,
                "sanlock sees host 2 as generation {g} flags {flags}, want {generation} LIVE(3)"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        // `sanlock client host_status -D` shows our slot as sanlock read it.
        let hs = daemon.client(&["host_status", "-s", "MIX", "-D"]);
        let hs = String::from_utf8_lossy(&hs.stdout).into_owned();
        let section: Vec<&str> = hs
            .lines()
            .skip_while(|l| !l.starts_with("2 timestamp"))
            .take_while(|l| !l.starts_with("3 "))
            .collect();
        for want in [
            format!("owner_generation={generation}"),
            "owner_name=tenure-host-2".into(),
            "io_timeout=1".into(),
            "owner_id=2".into(),
        ] {
            assert!(
                section.iter().any(|l| l.trim() == want),
                "sanlock client host_status -D lacks {want}:\n{hs}"
            );
        }

        // Host id busy, both ways, at once: tenure asks for sanlock's host id 1, a second
        // sanlock daemon asks for tenure's host id 2. Both wait out the other name's long delay.
        let second = &second;
        let sanlock_attempt = s.spawn(move || {
            second.python_result(&format!(
                "import sanlock\ntry:\n  sanlock.add_lockspace(b'MIX', 2, '{}', 0, iotimeout=1)\n  print('JOINED')\nexcept sanlock.SanlockException as e:\n  print('FAILED', e.errno)",
                dev_sanlock2.path_str()
            ))
        });
        let intruder = tenure_host(s, &dev_tenure2, 1, "tenure-intruder");
        let t = Timeouts::new(T, W);
        let failed = intruder.wait_for(
            "tenure's join of host id 1 fails",
            t.join_delay_other_name() + Duration::from_secs(15),
            |s| matches!(s.state, Some(LockspaceState::JoinFailed { .. })),
        );
        assert!(
            matches!(
                failed.state,
                Some(LockspaceState::JoinFailed {
                    error: DeltaError::HostIdBusy { .. }
                })
            ),
            "tenure joining a host id held by sanlock: {failed:?}"
        );
        drop(intruder);
        let sanlock_out = sanlock_attempt.join().expect("thread");
        eprintln!(
            "tenure joining host id 1: {failed:?}; sanlock joining host id 2: {}",
            sanlock_out.trim()
        );
        assert!(
            sanlock_out.trim().starts_with("FAILED"),
            "sanlock joining tenure's host id 2: {sanlock_out}"
        );
        let log = std::fs::read_to_string(second.rundir().join("daemon.log")).unwrap_or_default();
        assert!(
            log.contains("busy"),
            "second sanlock's log does not say busy:\n{log}"
        );

        // Both original holders kept their host ids.
        assert_eq!(tenure.snapshot().generation(), Some(generation));
        // tenure leaves: sanlock sees host 2 FREE.
        tenure.leave();
        tenure.wait_for("tenure leaves", Duration::from_secs(10), |s| {
            s.state == Some(LockspaceState::Left)
        });
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, flags) = sanlock_sees(&daemon, 2);
            if flags == 2 {
                break;
            }
            assert!(
                Instant::now() < end,
                "sanlock sees released host 2 with flags {flags}, want FREE(2)"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    daemon.python(&format!(
        "import sanlock; sanlock.rem_lockspace(b'MIX', 1, '{}', 0)",
        dev_sanlock.path_str()
    ));
}
