//! The emulated watchdog, in-process: the emulator runs on a thread of the test, the
//! "simulated host" it kills is a child process in its own process group.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tenure_watchdog::emulated::{
    self, read_fire_records, EmulatorConfig, EmulatorError, FireRecord, KillTarget,
};
use tenure_watchdog::{EmulatedError, EmulatedWatchdog};

struct Bed {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    record: PathBuf,
    host: Child,
    emu: Option<JoinHandle<Result<Option<FireRecord>, EmulatorError>>>,
}

impl Bed {
    fn start(tweak: impl FnOnce(&mut EmulatorConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let host = Command::new("sleep")
            .arg("120")
            .process_group(0)
            .spawn()
            .unwrap();
        let socket = dir.path().join("wd.sock");
        let record = dir.path().join("fired.log");
        let mut cfg = EmulatorConfig::new(
            socket.clone(),
            KillTarget::ProcessGroup(host.id() as i32),
            record.clone(),
        );
        tweak(&mut cfg);
        let emu = std::thread::spawn(move || emulated::run(cfg));
        let t0 = Instant::now();
        while !socket.exists() {
            if emu.is_finished() {
                panic!("emulator ended: {:?}", emu.join().unwrap());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "emulator did not start"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        Self {
            _dir: dir,
            socket,
            record,
            host,
            emu: Some(emu),
        }
    }

    fn wait_fired(&mut self, within: Duration) -> FireRecord {
        let t0 = Instant::now();
        let emu = self.emu.take().unwrap();
        while !emu.is_finished() {
            assert!(t0.elapsed() < within, "did not fire within {within:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
        let rec = emu.join().unwrap().unwrap().expect("fired, not shut down");
        let status = self.host.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "host was SIGKILLed");
        assert!(rec.killed_pids.contains(&(self.host.id() as i32)));
        let on_disk: Vec<FireRecord> = read_fire_records(&self.record)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(on_disk, vec![rec.clone()], "the record is on disk");
        rec
    }

    fn status(&self) -> String {
        emulated::query_status(&self.socket).unwrap()
    }

    fn host_alive(&mut self) -> bool {
        self.host.try_wait().unwrap().is_none()
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        let _ = self.host.kill();
        let _ = self.host.wait();
        if self.emu.as_ref().is_some_and(|e| !e.is_finished()) {
            // Disarm whatever is left so the emulator thread can be shut down.
            if let Ok(mut s) = UnixStream::connect(&self.socket) {
                let _ = s.write_all(b"OPEN 0\nWRITE V\nCLOSE\n");
            }
            std::thread::sleep(Duration::from_millis(50));
            let _ = emulated::shutdown(&self.socket);
        }
    }
}

fn raw(socket: &Path) -> (BufReader<UnixStream>, UnixStream) {
    let s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    (BufReader::new(s.try_clone().unwrap()), s)
}

fn say(r: &mut BufReader<UnixStream>, w: &mut UnixStream, line: &str) -> String {
    w.write_all(format!("{line}\n").as_bytes()).unwrap();
    let mut s = String::new();
    r.read_line(&mut s).unwrap();
    s.trim_end().to_owned()
}

#[test]
fn starved_fires_within_the_fire_timeout_and_kills_the_host_group() {
    let mut bed = Bed::start(|_| {});
    let mut wd = EmulatedWatchdog::open(&bed.socket, 1).unwrap();
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(300));
        wd.keepalive().unwrap();
    }
    assert!(
        bed.host_alive(),
        "fed for 1.2 s with a 1 s timeout: no fire"
    );
    let last = Instant::now();
    let rec = bed.wait_fired(Duration::from_secs(5));
    let after = last.elapsed();
    assert!(after >= Duration::from_secs(1), "fired early: {after:?}");
    assert!(
        rec.since_last_keepalive_ms >= 1000 && rec.since_last_keepalive_ms < 1500,
        "{rec:?}"
    );
    assert_eq!((rec.timeout_s, rec.effective_timeout_s), (1, 1));
    assert_eq!(rec.holder, "connected");
    assert_eq!(rec.holder_pid, Some(std::process::id() as i32));
    drop(wd);
}

#[test]
fn clean_disarm_never_fires_and_idle_shutdown_works() {
    let mut bed = Bed::start(|_| {});
    let wd = EmulatedWatchdog::open(&bed.socket, 1).unwrap();
    assert!(bed.status().starts_with("armed"), "{}", bed.status());
    wd.disarm().unwrap();
    assert_eq!(bed.status(), "idle");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(bed.host_alive());
    emulated::shutdown(&bed.socket).unwrap();
    let r = bed.emu.take().unwrap().join().unwrap().unwrap();
    assert!(r.is_none(), "shut down, not fired");
    assert!(read_fire_records(&bed.record).is_empty());
}

#[test]
fn a_holder_that_goes_away_uncleanly_leaves_it_armed_and_a_reopen_does_not_extend_it() {
    let mut bed = Bed::start(|_| {});
    let wd = EmulatedWatchdog::open(&bed.socket, 2).unwrap();
    // A second opener is refused while the first is connected.
    match EmulatedWatchdog::open(&bed.socket, 2) {
        Err(EmulatedError::Busy { pid, .. }) => assert_eq!(pid, std::process::id() as i32),
        other => panic!("expected busy, got {other:?}"),
    }
    let armed_at = Instant::now();
    drop(wd); // connection lost without the magic close
    std::thread::sleep(Duration::from_millis(200));
    assert!(bed.status().ends_with("orphaned"), "{}", bed.status());
    // Like the kernel, a re-open is allowed — but it must not feed.
    let (mut r, mut w) = raw(&bed.socket);
    assert_eq!(say(&mut r, &mut w, "OPEN 4242"), "OK");
    let rec = bed.wait_fired(Duration::from_secs(5));
    assert!(
        armed_at.elapsed() < Duration::from_millis(2800),
        "deadline kept"
    );
    assert_eq!(rec.holder_pid, Some(4242));
}

#[test]
fn closing_without_the_magic_character_fires_and_says_so() {
    let mut bed = Bed::start(|_| {});
    let (mut r, mut w) = raw(&bed.socket);
    assert_eq!(say(&mut r, &mut w, "OPEN 7"), "OK");
    assert_eq!(say(&mut r, &mut w, "SETTIMEOUT 1"), "OK 1");
    assert_eq!(say(&mut r, &mut w, "WRITE V"), "OK");
    assert_eq!(
        say(&mut r, &mut w, "WRITE -"),
        "OK",
        "a later write clears the magic"
    );
    assert_eq!(say(&mut r, &mut w, "CLOSE"), "OK armed");
    let rec = bed.wait_fired(Duration::from_secs(5));
    assert_eq!(rec.holder, "closed without magic close");
}

#[test]
fn garbage_and_oversized_lines_from_the_holder_leave_it_armed() {
    let mut bed = Bed::start(|_| {});
    let (mut r, mut w) = raw(&bed.socket);
    assert_eq!(say(&mut r, &mut w, "OPEN 9"), "OK");
    assert_eq!(say(&mut r, &mut w, "SETTIMEOUT 1"), "OK 1");
    assert_eq!(say(&mut r, &mut w, "FROB"), "ERR 22 unknown command");
    assert_eq!(
        say(&mut r, &mut w, "SETTIMEOUT 99999"),
        "ERR 22 timeout out of range"
    );
    // A non-holder may not feed.
    let (mut r2, mut w2) = raw(&bed.socket);
    assert_eq!(say(&mut r2, &mut w2, "KEEPALIVE"), "ERR 9 not open");
    w.write_all(&[b'x'; 1000]).unwrap();
    let mut s = String::new();
    r.read_line(&mut s).unwrap();
    assert_eq!(s.trim_end(), "ERR 7 line too long");
    let rec = bed.wait_fired(Duration::from_secs(5));
    assert_eq!(rec.holder, "connection lost");
}

#[test]
fn an_itco_like_device_fires_after_two_timeouts_and_refused_timeouts_disarm() {
    let mut bed = Bed::start(|c| {
        c.fire_after_timeouts = 2;
        c.max_timeout_s = 5;
        c.default_timeout_s = 5;
        c.identity = "iTCO_wdt".into();
    });
    match EmulatedWatchdog::open(&bed.socket, 6) {
        Err(EmulatedError::TimeoutUnsupported { .. }) => {}
        other => panic!("expected refusal, got {other:?}"),
    }
    assert_eq!(bed.status(), "idle", "a refused timeout leaves it disarmed");
    let wd = EmulatedWatchdog::open(&bed.socket, 1).unwrap();
    assert_eq!(wd.identity(), "iTCO_wdt");
    let t0 = Instant::now();
    let rec = bed.wait_fired(Duration::from_secs(5));
    assert!(t0.elapsed() >= Duration::from_secs(2));
    assert_eq!(
        (
            rec.timeout_s,
            rec.fire_after_timeouts,
            rec.effective_timeout_s
        ),
        (1, 2, 2)
    );
    drop(wd);
}

#[test]
fn the_emulator_refuses_to_kill_its_own_group() {
    let dir = tempfile::tempdir().unwrap();
    let own = nix::unistd::getpgrp().as_raw();
    let cfg = EmulatorConfig::new(
        dir.path().join("s"),
        KillTarget::ProcessGroup(own),
        dir.path().join("r"),
    );
    let e = emulated::run(cfg).unwrap_err();
    assert!(e.to_string().contains("itself"), "{e}");
    let cfg = EmulatorConfig::new(
        dir.path().join("s"),
        KillTarget::Cgroup(dir.path().to_owned()),
        dir.path().join("r"),
    );
    assert!(emulated::run(cfg)
        .unwrap_err()
        .to_string()
        .contains("not a cgroup"));
}
