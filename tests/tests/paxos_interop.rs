//! Paxos leases contended by real sanlock 3.8.5 and tenure on one resource: sanlock is host 1,
//! tenure host 2 of one lockspace (own loop devices over one file). Exclusion holds both ways
//! (each is refused while the other holds, sanlock with -243 "held by another host"), and each
//! acquires what the other released, with lver advancing on disk as both read it; and
//! `tenure resource owners` agrees with sanlock's read_resource_owners at every turn; the
//! lock value block passes from sanlock to tenure and back; shared leases coexist across both
//! and keep either side's exclusive acquire out.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use tenure_core::clock::MonotonicClock;
use tenure_core::delta::DeltaConfig;
use tenure_core::dev::{Access, Device};
use tenure_core::io::{open_backend, BackendKind, DiskId, EngineConfig, IoBackend};
use tenure_core::paxos::{blocking, PaxosConfig, PaxosError};
use tenure_core::timeouts::Timeouts;
use tenure_format::{Geometry, LeaderRecord, Name};
use tenure_tests::{
    sanlock_available, sanlock_direct, sanlock_lock, tenure_ok, BackingFile, LockspaceThread,
    LoopDevice, SanlockDaemon,
};

const T: u16 = 1;
const W: u32 = 60;
const RES_OFFSET: u64 = 1 << 20;

/// A python3-sanlock holder: registers, acquires on "acquire", releases on "release", exits
/// on "quit"; answers each command with one line.
const HOLDER: &str = r#"
import sys, sanlock
dev = sys.argv[1]
fd = sanlock.register()
for line in sys.stdin:
    cmd = line.strip()
    try:
        if cmd == "acquire":
            sanlock.acquire(b"PX", b"R", [(dev, 1048576)], slkfd=fd)
        elif cmd == "release":
            sanlock.release(b"PX", b"R", [(dev, 1048576)], slkfd=fd)
        elif cmd == "acquire_sh":
            sanlock.acquire(b"PX", b"R", [(dev, 1048576)], slkfd=fd, shared=True)
        elif cmd == "acquire_lvb":
            sanlock.acquire(b"PX", b"R", [(dev, 1048576)], slkfd=fd, lvb=True)
        elif cmd.startswith("set_lvb "):
            sanlock.set_lvb(b"PX", b"R", [(dev, 1048576)], cmd[8:].encode())
        elif cmd == "get_lvb":
            data = sanlock.get_lvb(b"PX", b"R", [(dev, 1048576)], 32)
            print("LVB", data.rstrip(b"\0").decode(), flush=True)
            continue
        elif cmd == "owners":
            o = sanlock.read_resource_owners(b"PX", b"R", [(dev, 1048576)])
            hosts = sorted((x["host_id"], x["generation"]) for x in o)
            print("OWNERS" + "".join(" %d:%d" % h for h in hosts), flush=True)
            continue
        elif cmd == "quit":
            break
        print("OK", flush=True)
    except sanlock.SanlockException as e:
        print("ERR", e.errno, flush=True)
"#;

#[test]
fn sanlock_and_tenure_contend_for_one_resource() {
    if !sanlock_available() {
        return;
    }
    let _serial = sanlock_lock();
    let file = BackingFile::new(4 << 20);
    let (dev_sanlock, dev_tenure) = (
        LoopDevice::attach(file.path(), 512),
        LoopDevice::attach(file.path(), 512),
    );
    let p = dev_tenure.path_str();
    tenure_ok(&[
        "lockspace",
        "init",
        &format!("PX:0:{p}:0"),
        "--io-timeout",
        "1",
    ]);
    tenure_ok(&[
        "resource",
        "init",
        &format!("PX:R:{p}:1M"),
        "--num-hosts",
        "4",
    ]);
    let daemon = SanlockDaemon::start();
    daemon.python(&format!(
        "import sanlock; sanlock.add_lockspace(b'PX', 1, '{}', 0, iotimeout=1)",
        dev_sanlock.path_str()
    ));
    let mut holder = Command::new("/usr/bin/python3")
        .args(["-c", HOLDER, &dev_sanlock.path_str()])
        .env("SANLOCK_RUN_DIR", daemon.rundir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut to_holder = holder.stdin.take().expect("stdin");
    let mut from_holder = BufReader::new(holder.stdout.take().expect("stdout")).lines();
    let mut sanlock_cmd = |cmd: &str| -> String {
        writeln!(to_holder, "{cmd}").expect("send");
        from_holder.next().and_then(Result::ok).unwrap_or_default()
    };
    let space = Name::new("PX").expect("name");
    std::thread::scope(|s| {
        let cfg = DeltaConfig {
            space_name: space,
            host_id: 2,
            host_name: Name::new("tenure-px-2").expect("name"),
            geometry: Geometry::LEGACY_512,
            area_offset: 0,
            timeouts: Timeouts::new(T, W),
        };
        let ls = LockspaceThread::spawn(s, dev_tenure.path(), cfg);
        let joined = ls.wait_for("tenure joins", Duration::from_secs(10), |s| {
            s.generation().is_some()
        });
        let generation = joined.generation().expect("joined");
        ls.wait_for("tenure sees sanlock LIVE", Duration::from_secs(10), |s| {
            s.host(1).0 == tenure_core::delta::HostStatus::Live
        });

        let config = EngineConfig {
            ring_entries: 16,
            buffer_classes: vec![(512, 16), (1 << 20, 4)],
            sync_workers: 1,
        };
        let dev = Device::open(dev_tenure.path(), Access::ReadWrite).expect("open");
        let (mut engine, _) = open_backend(vec![dev], &config, BackendKind::Uring).expect("engine");
        let pcfg = PaxosConfig {
            space_name: space,
            resource_name: Name::new("R").expect("name"),
            geometry: Geometry::LEGACY_512,
            area_offset: RES_OFFSET,
            host_id: 2,
            generation,
            timeouts: Timeouts::new(T, W),
            no_wait: true,
            expect_lver: None,
            read_lvb: false,
            shared: false,
        };
        let clock = MonotonicClock;
        let mut owner_status = |host: u64, gen: u64| {
            let (status, seen_gen) = ls.snapshot().host(host);
            (status, seen_gen == gen)
        };
        let mut acquire = |engine: &mut dyn IoBackend, cfg: &PaxosConfig| {
            blocking::acquire(engine, &clock, DiskId(0), cfg.clone(), &mut owner_status)
                .expect("engine")
        };
        let leader = || {
            let out = sanlock_direct(&["read_leader", "-r", &format!("PX:R:{p}:{RES_OFFSET}")]);
            let get = |k: &str| {
                out.lines()
                    .find_map(|l| l.strip_prefix(&format!("{k} ")))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(u64::MAX)
            };
            (get("owner_id"), get("lver"), get("timestamp"))
        };

        // tenure's owners view, in the holder script's "OWNERS id:gen ..." form.
        let tenure_owners = || {
            let out = tenure_ok(&["resource", "owners", &format!("PX:R:{p}:1M"), "--json"]);
            let v: serde_json::Value = serde_json::from_str(&out).expect("owners json");
            let o = &v[0]["owners"];
            let mut hosts: Vec<(u64, u64)> = o["shared"]
                .as_array()
                .expect("shared")
                .iter()
                .chain(o["exclusive"].as_object().map(|_| &o["exclusive"]))
                .map(|h| {
                    (
                        h["host_id"].as_u64().unwrap(),
                        h["generation"].as_u64().unwrap(),
                    )
                })
                .collect();
            hosts.sort_unstable();
            let mut line = String::from("OWNERS");
            for (h, g) in hosts {
                line.push_str(&format!(" {h}:{g}"));
            }
            line
        };
        assert_eq!(tenure_owners(), "OWNERS", "a fresh resource has no owner");
        assert_eq!(sanlock_cmd("owners"), "OWNERS");
        // 1. sanlock holds: tenure is refused because the owner is alive.
        assert_eq!(sanlock_cmd("acquire"), "OK");
        let seen = sanlock_cmd("owners");
        assert!(seen.starts_with("OWNERS 1:"), "{seen}");
        assert_eq!(tenure_owners(), seen, "owners while sanlock holds");
        let r = acquire(engine.as_mut(), &pcfg);
        assert!(
            matches!(r, Err(PaxosError::OwnerAlive { host_id: 1, .. })),
            "tenure while sanlock holds: {r:?}"
        );
        // 2. sanlock releases: tenure acquires the next lver.
        assert_eq!(sanlock_cmd("release"), "OK");
        let held = acquire(engine.as_mut(), &pcfg)
            .unwrap_or_else(|e| panic!("tenure after sanlock released: {e}"));
        assert_eq!(held.lver, 2);
        let (owner, lver, ts) = leader();
        assert_eq!((owner, lver), (2, 2), "sanlock reads tenure's leader");
        assert!(ts > 0);
        // 3. tenure holds: sanlock is refused with -243 ("Lease is held by another host").
        let refused = sanlock_cmd("acquire");
        assert_eq!(refused, "ERR -243", "sanlock while tenure holds");
        assert_eq!(tenure_owners(), format!("OWNERS 2:{generation}"));
        assert_eq!(
            sanlock_cmd("owners"),
            tenure_owners(),
            "owners while tenure holds"
        );
        // 4. tenure releases: sanlock acquires lver 3 and releases.
        blocking::release(engine.as_mut(), &clock, DiskId(0), pcfg.clone(), held)
            .expect("engine")
            .expect("release");
        let (owner, lver, ts) = leader();
        assert_eq!((owner, lver, ts), (2, 2, 0), "released leader");
        assert_eq!(tenure_owners(), "OWNERS", "released");
        assert_eq!(sanlock_cmd("owners"), "OWNERS", "sanlock agrees it is free");
        assert_eq!(sanlock_cmd("acquire"), "OK");
        let (owner, lver, _) = leader();
        assert_eq!(
            (owner, lver),
            (1, 3),
            "sanlock acquired after tenure released"
        );
        // tenure's dump agrees.
        let leader_rec = {
            let mut d = tenure_core::direct::DirectDisk::open(
                dev_tenure.path(),
                Access::Read,
                BackendKind::Auto,
            )
            .expect("open");
            d.read(RES_OFFSET, 512, LeaderRecord::decode)
                .expect("read")
                .expect("decode")
        };
        assert_eq!((leader_rec.owner_id, leader_rec.lver), (1, 3));
        assert_eq!(sanlock_cmd("release"), "OK");
        // 5. Alternating a few more rounds: lver keeps advancing, exclusion holds.
        let mut expect_lver = 4;
        for _ in 0..3 {
            let held =
                acquire(engine.as_mut(), &pcfg).unwrap_or_else(|e| panic!("tenure round: {e}"));
            assert_eq!(held.lver, expect_lver);
            assert_eq!(sanlock_cmd("acquire"), "ERR -243");
            blocking::release(engine.as_mut(), &clock, DiskId(0), pcfg.clone(), held)
                .expect("engine")
                .expect("release");
            assert_eq!(sanlock_cmd("acquire"), "OK");
            let r = acquire(engine.as_mut(), &pcfg);
            assert!(
                matches!(r, Err(PaxosError::OwnerAlive { host_id: 1, .. })),
                "{r:?}"
            );
            assert_eq!(sanlock_cmd("release"), "OK");
            expect_lver += 2;
        }
        // 6. The lock value block passes both ways (written at release, read at acquire).
        assert_eq!(sanlock_cmd("acquire_lvb"), "OK");
        assert_eq!(sanlock_cmd("set_lvb from-sanlock"), "OK");
        assert_eq!(sanlock_cmd("release"), "OK");
        let lvb_cfg = PaxosConfig {
            read_lvb: true,
            shared: false,
            ..pcfg.clone()
        };
        let held = acquire(engine.as_mut(), &lvb_cfg)
            .unwrap_or_else(|e| panic!("tenure acquire with LVB: {e}"));
        let lvb = held.lvb.clone().expect("lvb read");
        assert_eq!(&lvb[..12], b"from-sanlock", "tenure reads sanlock's LVB");
        blocking::release_with_lvb(
            engine.as_mut(),
            &clock,
            DiskId(0),
            lvb_cfg,
            held,
            b"from-tenure",
        )
        .expect("engine")
        .expect("release with LVB");
        assert_eq!(sanlock_cmd("acquire_lvb"), "OK");
        assert_eq!(
            sanlock_cmd("get_lvb"),
            "LVB from-tenure",
            "sanlock reads tenure's LVB"
        );
        assert_eq!(sanlock_cmd("release"), "OK");
        // 7. Shared leases across both: they coexist; an exclusive acquire on either side is
        //    refused while the other holds shared, and succeeds once it released.
        let sh_cfg = PaxosConfig {
            shared: true,
            ..pcfg.clone()
        };
        assert_eq!(sanlock_cmd("acquire_sh"), "OK");
        let sh = acquire(engine.as_mut(), &sh_cfg)
            .unwrap_or_else(|e| panic!("tenure shared beside sanlock shared: {e}"));
        assert!(sh.shared);
        let seen = sanlock_cmd("owners");
        eprintln!(
            "owners with both shared: sanlock {seen:?}, tenure {:?}",
            tenure_owners()
        );
        assert_eq!(tenure_owners(), seen, "owners with two shared holders");
        blocking::release(engine.as_mut(), &clock, DiskId(0), sh_cfg.clone(), sh)
            .expect("engine")
            .expect("release shared");
        let r = acquire(engine.as_mut(), &pcfg);
        assert!(
            matches!(r, Err(PaxosError::SharedBusy { host_id: 1, .. })),
            "tenure exclusive while sanlock holds shared: {r:?}"
        );
        let sh = acquire(engine.as_mut(), &sh_cfg)
            .unwrap_or_else(|e| panic!("tenure shared again: {e}"));
        assert_eq!(sanlock_cmd("release"), "OK");
        assert_eq!(
            sanlock_cmd("acquire"),
            "ERR 11",
            "sanlock exclusive while tenure holds shared (EAGAIN)"
        );
        blocking::release(engine.as_mut(), &clock, DiskId(0), sh_cfg.clone(), sh)
            .expect("engine")
            .expect("release shared");
        assert_eq!(
            sanlock_cmd("acquire"),
            "OK",
            "sanlock exclusive after tenure released"
        );
        assert_eq!(sanlock_cmd("release"), "OK");
        // 8. Shared → exclusive conversions across both. tenure's is refused while sanlock
        //    holds shared (and tenure stays shared), succeeds once sanlock released, and then
        //    keeps sanlock out; sanlock's (`sanlock client convert`) is refused while tenure
        //    holds shared and succeeds once tenure released.
        let ex_cfg = PaxosConfig {
            no_wait: false,
            ..pcfg.clone()
        };
        assert_eq!(sanlock_cmd("acquire_sh"), "OK");
        let sh = blocking::acquire(
            engine.as_mut(),
            &clock,
            DiskId(0),
            sh_cfg.clone(),
            &mut owner_status,
        )
        .expect("engine")
        .expect("tenure shared");
        let (e, sh) = blocking::convert_to_exclusive(
            engine.as_mut(),
            &clock,
            DiskId(0),
            ex_cfg.clone(),
            &sh,
            &mut owner_status,
        )
        .expect("engine")
        .expect_err("tenure converts while sanlock holds shared");
        assert!(
            matches!(e, PaxosError::SharedBusy { host_id: 1, .. }),
            "{e:?}"
        );
        assert_eq!(
            tenure_owners(),
            sanlock_cmd("owners"),
            "both still shared after the refused conversion"
        );
        assert!(tenure_owners().contains("2:"), "tenure still holds shared");
        assert_eq!(sanlock_cmd("release"), "OK");
        let ex = blocking::convert_to_exclusive(
            engine.as_mut(),
            &clock,
            DiskId(0),
            ex_cfg.clone(),
            &sh,
            &mut owner_status,
        )
        .expect("engine")
        .unwrap_or_else(|(e, _)| panic!("tenure converts after sanlock released: {e:?}"));
        assert!(!ex.shared);
        assert_eq!(leader().0, 2, "the leader names tenure");
        assert_eq!(
            sanlock_cmd("acquire_sh"),
            "ERR -243",
            "sanlock shared while tenure holds exclusively"
        );
        blocking::release(engine.as_mut(), &clock, DiskId(0), ex_cfg, ex)
            .expect("engine")
            .expect("release exclusive");
        let sh = blocking::acquire(
            engine.as_mut(),
            &clock,
            DiskId(0),
            sh_cfg.clone(),
            &mut owner_status,
        )
        .expect("engine")
        .expect("tenure shared");
        assert_eq!(sanlock_cmd("acquire_sh"), "OK");
        let holder_pid = holder.id().to_string();
        let sl_res = format!("PX:R:{}:{RES_OFFSET}", dev_sanlock.path_str());
        let convert = daemon.client(&["convert", "-r", &sl_res, "-p", &holder_pid]);
        let text = String::from_utf8_lossy(&convert.stdout).into_owned();
        assert!(
            !text.contains("done 0"),
            "sanlock converts while tenure holds shared: {text}"
        );
        eprintln!(
            "sanlock's conversion while tenure holds shared: {}",
            text.trim()
        );
        blocking::release(engine.as_mut(), &clock, DiskId(0), sh_cfg, sh)
            .expect("engine")
            .expect("release shared");
        let convert = daemon.client(&["convert", "-r", &sl_res, "-p", &holder_pid]);
        let text = String::from_utf8_lossy(&convert.stdout).into_owned();
        assert!(text.contains("done 0"), "sanlock converts: {text}");
        assert_eq!(leader().0, 1, "the leader names sanlock's host");
        let r = blocking::acquire(
            engine.as_mut(),
            &clock,
            DiskId(0),
            pcfg.clone(),
            &mut owner_status,
        )
        .expect("engine");
        assert!(
            matches!(r, Err(PaxosError::OwnerAlive { host_id: 1, .. })),
            "tenure exclusive while sanlock holds it exclusively after converting: {r:?}"
        );
        assert_eq!(sanlock_cmd("release"), "OK");
        let _ = sanlock_cmd("quit");
        ls.leave();
        ls.wait_for("tenure leaves", Duration::from_secs(10), |s| {
            s.state == Some(tenure_core::lockspace::LockspaceState::Left)
        });
    });
    let _ = holder.wait();
    daemon.python(&format!(
        "import sanlock; sanlock.rem_lockspace(b'PX', 1, '{}', 0)",
        dev_sanlock.path_str()
    ));
}
