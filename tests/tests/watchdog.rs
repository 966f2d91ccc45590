//! The watchdog end to end: the real `tenure watchdog emulate` process as the timer, the
//! real device driver reaching it through the LD_PRELOAD test bed (`watchdog/testbed`), and
//! a feeder process (`tenure-wd-feeder`) driving the multiplexer. Each "simulated host" is a
//! process group the emulator kills when it fires.

use std::io::{BufRead, BufReader};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tenure_tests::{tenure_bin, wdshim_so};
use tenure_watchdog::emulated::{self, read_fire_records, FireRecord};

/// How the feeder reaches the emulator: directly (emulated mode) or as a device through the
/// LD_PRELOAD shim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Emulated,
    Device,
}

struct Bed {
    dir: tempfile::TempDir,
    via: Via,
    shim: Option<PathBuf>,
    host: Child,
    emulator: Child,
    children: Vec<Child>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

impl Bed {
    /// Starts the simulated host (a process group led by `sleep`) and an emulator that kills
    /// it. `None` when the test bed cannot be built here and skipping is allowed.
    fn start(via: Via, emulator_args: &[&str]) -> Option<Self> {
        let shim = match via {
            Via::Device => Some(wdshim_so()?),
            Via::Emulated => None,
        };
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("watchdog0"), b"").unwrap();
        let host = Command::new("sleep")
            .arg("600")
            .process_group(0)
            .spawn()
            .unwrap();
        let marker = dir.path().join("run/watchdog-armed");
        let emulator = Command::new(tenure_bin())
            .args(["watchdog", "emulate", "--socket"])
            .arg(dir.path().join("watchdog0.sock"))
            .args(["--kill-pgid", &host.id().to_string(), "--record"])
            .arg(dir.path().join("fired.log"))
            .arg("--clear-on-fire")
            .arg(&marker)
            .args(emulator_args)
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("emulator.log")).unwrap())
            .spawn()
            .unwrap();
        let mut bed = Self {
            dir,
            via,
            shim,
            host,
            emulator,
            children: Vec::new(),
        };
        let t0 = Instant::now();
        while !bed.socket().exists() {
            let log = || std::fs::read_to_string(bed.dir.path().join("emulator.log")).unwrap();
            if bed.emulator.try_wait().unwrap().is_some() {
                panic!("emulator ended: {}", log());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "emulator did not start: {}",
                log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(bed)
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("watchdog0.sock")
    }

    fn device(&self) -> PathBuf {
        self.dir.path().join("watchdog0")
    }

    fn marker_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    fn status(&self) -> String {
        emulated::query_status(&self.socket()).unwrap()
    }

    /// Waits (10 s at most) until the emulator's status satisfies `ok`: it learns of a
    /// disarm or a lost connection asynchronously, so one sample may still show the state
    /// before.
    fn wait_status(&self, ok: impl Fn(&str) -> bool, what: &str) {
        let t0 = Instant::now();
        loop {
            let s = self.status();
            if ok(&s) {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{what}: status still {s:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A command inside the simulated host's process group, wired to the watchdog.
    fn in_host(&self, program: &Path) -> Command {
        let mut c = Command::new(program);
        c.process_group(self.host.id() as i32);
        if let Some(so) = &self.shim {
            c.env("LD_PRELOAD", so)
                .env("TENURE_WDSHIM_DIR", self.dir.path());
        }
        c
    }

    fn feeder(&mut self, fire_timeout_s: u32, marker_dir: &Path, args: &[&str]) -> Feeder {
        let mut c = self.in_host(Path::new(env!("CARGO_BIN_EXE_tenure-wd-feeder")));
        match self.via {
            Via::Emulated => c.arg("--emulated").arg(self.socket()),
            Via::Device => c.arg("--device").arg(self.device()),
        };
        c.args([
            "--fire-timeout",
            &fire_timeout_s.to_string(),
            "--marker-dir",
        ])
        .arg(marker_dir)
        .args(args)
        .stdout(Stdio::piped());
        let mut child = c.spawn().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let pid = child.id() as i32;
        self.children.push(child);
        Feeder {
            pid,
            out,
            lines: Vec::new(),
        }
    }

    fn child(&mut self, pid: i32) -> &mut Child {
        self.children
            .iter_mut()
            .find(|c| c.id() as i32 == pid)
            .unwrap()
    }

    /// Waits for the emulator to fire; checks the host group died by SIGKILL and returns the
    /// record.
    fn wait_fired(&mut self, within: Duration) -> FireRecord {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.emulator.try_wait().unwrap() {
                assert!(st.success(), "emulator exit {st:?}");
                break;
            }
            assert!(
                t0.elapsed() < within,
                "did not fire within {within:?}: {}",
                self.status()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let st = self.host.wait().unwrap();
        assert_eq!(
            st.signal(),
            Some(libc::SIGKILL),
            "the host group was SIGKILLed"
        );
        let recs: Vec<FireRecord> = read_fire_records(&self.dir.path().join("fired.log"))
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(recs.len(), 1, "one record");
        assert!(recs[0].killed_pids.contains(&(self.host.id() as i32)));
        assert!(
            !self.marker_dir().join("watchdog-armed").exists(),
            "the simulated reboot clears the marker"
        );
        recs[0].clone()
    }

    fn no_fire_record(&self) -> bool {
        read_fire_records(&self.dir.path().join("fired.log")).is_empty()
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // The host group (feeders joined it) and the emulator (it ignores SIGTERM).
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.host.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.host.wait();
        let _ = self.emulator.kill();
        let _ = self.emulator.wait();
    }
}

struct Feeder {
    pid: i32,
    out: BufReader<ChildStdout>,
    lines: Vec<String>,
}

impl Feeder {
    /// Reads lines until one starts with `prefix` (panics at EOF).
    fn until(&mut self, prefix: &str) -> String {
        loop {
            let mut l = String::new();
            let n = self.out.read_line(&mut l).unwrap();
            assert!(
                n > 0,
                "feeder ended before {prefix:?}; saw {:?}",
                self.lines
            );
            let l = l.trim_end().to_owned();
            self.lines.push(l.clone());
            if l.starts_with(prefix) {
                return l;
            }
        }
    }
}

fn both(test: impl Fn(Via)) {
    for via in [Via::Emulated, Via::Device] {
        eprintln!("-- via {via:?}");
        test(via);
    }
}

#[test]
fn a_starved_source_fires_within_the_fire_timeout() {
    both(|via| {
        let Some(mut bed) = Bed::start(via, &[]) else {
            return;
        };
        let start_ms = unix_ms();
        let marker_dir = bed.marker_dir();
        // Source "ls" must renew by 1.5 s and never does; fire timeout 2 s.
        let mut f = bed.feeder(
            2,
            &marker_dir,
            &["--source", "ls:1500", "--source", "other:never"],
        );
        f.until("armed");
        assert!(
            marker_dir.join("watchdog-armed").exists(),
            "marker before arming"
        );
        f.until("fed");
        let w = f.until("withheld");
        assert!(w.starts_with("withheld ls "), "{w}");
        let rec = bed.wait_fired(Duration::from_secs(10));
        let fired_after_ms = rec.fired_at_unix_ms - start_ms;
        // Last feed before deadline - interval; fires by deadline + W (+ process start-up
        // and scheduling slack).
        assert!(
            fired_after_ms <= 1500 + 2000 + 700,
            "fired {fired_after_ms} ms after start"
        );
        assert!(rec.since_last_keepalive_ms >= 2000, "{rec:?}");
        assert_eq!(rec.holder_pid, Some(f.pid));
        let st = bed.child(f.pid).wait().unwrap();
        assert_eq!(
            st.signal(),
            Some(libc::SIGKILL),
            "the feeder died with its host"
        );
    });
}

#[test]
fn a_clean_removal_does_not_fire_and_a_clean_disarm_leaves_it_idle() {
    both(|via| {
        let Some(mut bed) = Bed::start(via, &[]) else {
            return;
        };
        let marker_dir = bed.marker_dir();
        // "ls" would expire at 1.5 s but is removed (its holders died) at 1 s.
        let mut f = bed.feeder(
            1,
            &marker_dir,
            &[
                "--source",
                "ls:1500",
                "--source",
                "b:never",
                "--remove",
                "ls@1000",
                "--disarm-at",
                "3500",
            ],
        );
        f.until("removed ls true");
        f.until("disarmed");
        let pid = f.pid;
        assert!(bed.child(pid).wait().unwrap().success());
        assert!(
            !f.lines.iter().any(|l| l.starts_with("withheld")),
            "never withheld: {:?}",
            f.lines
        );
        bed.wait_status(|s| s == "idle", "disarmed");
        assert!(
            !marker_dir.join("watchdog-armed").exists(),
            "marker cleared"
        );
        std::thread::sleep(Duration::from_millis(1500));
        assert!(bed.host.try_wait().unwrap().is_none(), "host alive");
        assert!(bed.no_fire_record());
    });
}

#[test]
fn a_feeder_killed_while_armed_fires_and_its_restart_does_not_feed() {
    both(|via| {
        let Some(mut bed) = Bed::start(via, &[]) else {
            return;
        };
        let marker_dir = bed.marker_dir();
        let mut f = bed.feeder(3, &marker_dir, &["--source", "ls:never"]);
        f.until("fed");
        f.until("fed");
        let dead = f.pid;
        let killed_at = Instant::now();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(dead),
            nix::sys::signal::Signal::SIGKILL,
        );
        bed.child(dead).wait().unwrap();
        bed.wait_status(|s| s.ends_with("orphaned"), "feeder killed while armed");
        // The restarted feeder finds the marker of a dead predecessor: it must not feed.
        let mut again = bed.feeder(3, &marker_dir, &["--source", "ls:never"]);
        let l = again.until("arm-failed");
        assert!(l.contains("reset is pending"), "{l}");
        let pid = again.pid;
        assert_eq!(bed.child(pid).wait().unwrap().code(), Some(3));
        let rec = bed.wait_fired(Duration::from_secs(10));
        assert!(killed_at.elapsed() < Duration::from_millis(3000 + 1500));
        assert_eq!(rec.holder_pid, Some(dead), "nobody re-opened it");
        assert_eq!(rec.holder, "connection lost");
    });
}

#[test]
fn an_itco_device_is_programmed_with_half_and_fires_at_the_fire_timeout() {
    let Some(mut bed) = Bed::start(
        Via::Device,
        &["--identity", "iTCO_wdt", "--fire-after-timeouts", "2"],
    ) else {
        return;
    };
    // `tenure watchdog test` arms with W = 2, feeds 1 s, then starves it.
    let mut test = bed.in_host(&tenure_bin());
    test.args(["watchdog", "test", "--device"])
        .arg(bed.device())
        .args([
            "--fire-timeout",
            "2",
            "--feed-for",
            "1",
            "--yes",
            "--marker-dir",
        ])
        .arg(bed.marker_dir())
        .stderr(Stdio::piped());
    let child = test.spawn().unwrap();
    let rec = bed.wait_fired(Duration::from_secs(15));
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.signal(), Some(libc::SIGKILL));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("WARNING"), "{err}");
    assert!(err.contains("identity \"iTCO_wdt\""), "{err}");
    assert_eq!(rec.timeout_s, 1, "iTCO got half the fire timeout");
    assert_eq!(rec.effective_timeout_s, 2, "and fires at the fire timeout");
    assert!(rec.since_last_keepalive_ms >= 2000 && rec.since_last_keepalive_ms < 3000);
}

#[test]
fn watchdog_test_needs_yes_and_works_on_the_emulated_watchdog() {
    let Some(mut bed) = Bed::start(Via::Emulated, &[]) else {
        return;
    };
    let out = bed
        .in_host(&tenure_bin())
        .args(["watchdog", "test", "--emulated"])
        .arg(bed.socket())
        .arg("--marker-dir")
        .arg(bed.marker_dir())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Not armed"));
    bed.wait_status(|s| s == "idle", "never armed");
    let mut child = bed
        .in_host(&tenure_bin())
        .args([
            "watchdog",
            "test",
            "--fire-timeout",
            "2",
            "--feed-for",
            "1",
            "--yes",
            "--emulated",
        ])
        .arg(bed.socket())
        .arg("--marker-dir")
        .arg(bed.marker_dir())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rec = bed.wait_fired(Duration::from_secs(10));
    assert_eq!(rec.effective_timeout_s, 2);
    assert_eq!(rec.holder_pid, Some(child.id() as i32));
    assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
}

#[test]
fn a_busy_device_names_its_holder_and_probe_reads_identity_and_disarms() {
    let Some(mut bed) = Bed::start(
        Via::Device,
        &["--max-timeout", "30", "--default-timeout", "30"],
    ) else {
        return;
    };
    let probe = |bed: &Bed, w: &str| -> serde_json::Value {
        let out = bed
            .in_host(&tenure_bin())
            .args([
                "watchdog",
                "probe",
                "--open",
                "--json",
                "--fire-timeout",
                w,
                "--device",
            ])
            .arg(bed.device())
            .arg("--marker-dir")
            .arg(bed.marker_dir())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()[0].clone()
    };
    // Idle device: identity, options and the fire-timeout check, then a clean disarm.
    let p = probe(&bed, "20");
    assert_eq!(p["identity"]["identity"], "tenure emulated watchdog");
    assert_eq!(p["fire_timeout_ok"], true);
    assert_eq!(p["programmed_timeout_s"], 20);
    bed.wait_status(|s| s == "idle", "probe disarmed it");
    let p = probe(&bed, "60");
    assert_eq!(p["fire_timeout_ok"], false, "{p}");
    bed.wait_status(|s| s == "idle", "a refused device is disarmed too");
    // A holder: probe names it, a second opener is refused with its pid.
    let marker_dir = bed.marker_dir();
    let mut f = bed.feeder(5, &marker_dir, &["--source", "ls:never"]);
    f.until("fed");
    let p = probe(&bed, "5");
    let holders: Vec<i64> = p["holders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["pid"].as_i64().unwrap())
        .collect();
    assert_eq!(holders, vec![i64::from(f.pid)], "{p}");
    assert!(p["note"].as_str().unwrap().contains("held open"));
    let other_markers = bed.dir.path().join("other-run");
    let mut second = bed.feeder(5, &other_markers, &["--source", "ls:never"]);
    let l = second.until("arm-failed");
    assert!(
        l.contains("busy") && l.contains(&format!("pid {}", f.pid)),
        "{l}"
    );
}

#[test]
fn probe_without_devices_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(tenure_bin())
        .args(["watchdog", "probe", "--dev-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no watchdog device") && err.contains("emulated"),
        "{err}"
    );
}

/// A cgroup as the simulated host (v1 `pids` hierarchy here, v2 `cgroup.kill` elsewhere):
/// removed again even when the test fails.
struct TestCgroup(PathBuf);

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            if let Ok(procs) = std::fs::read_to_string(self.0.join("cgroup.procs")) {
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn the_emulator_kills_a_whole_cgroup() {
    let base = [
        "/sys/fs/cgroup/pids",
        "/sys/fs/cgroup/unified",
        "/sys/fs/cgroup",
    ]
    .iter()
    .map(Path::new)
    .find(|p| p.join("cgroup.procs").exists());
    if !tenure_tests::prerequisite(
        tenure_tests::is_root() && base.is_some(),
        "cgroup tests need root and a writable cgroup hierarchy",
    ) {
        return;
    }
    let cg = TestCgroup(
        base.unwrap()
            .join(format!("tenure-wdtest-{}", std::process::id())),
    );
    std::fs::create_dir(&cg.0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("wd.sock");
    let record = dir.path().join("fired.log");
    let mut emulator = Command::new(tenure_bin())
        .args(["watchdog", "emulate", "--socket"])
        .arg(&socket)
        .arg("--kill-cgroup")
        .arg(&cg.0)
        .arg("--record")
        .arg(&record)
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !socket.exists() {
        assert!(t0.elapsed() < Duration::from_secs(10) && emulator.try_wait().unwrap().is_none());
        std::thread::sleep(Duration::from_millis(10));
    }
    // Two processes in the cgroup, in different process groups: both must die.
    let mut a = Command::new("sleep").arg("600").spawn().unwrap();
    let mut b = Command::new("sleep")
        .arg("600")
        .process_group(0)
        .spawn()
        .unwrap();
    for p in [&a, &b] {
        std::fs::write(cg.0.join("cgroup.procs"), p.id().to_string()).unwrap();
    }
    let wd = tenure_watchdog::EmulatedWatchdog::open(&socket, 1).unwrap();
    let st = emulator.wait().unwrap();
    assert!(st.success());
    for p in [&mut a, &mut b] {
        assert_eq!(p.wait().unwrap().signal(), Some(libc::SIGKILL));
    }
    let rec = read_fire_records(&record).pop().unwrap().unwrap();
    assert!(rec.target.starts_with("cgroup "));
    assert!(
        rec.killed_pids.contains(&(a.id() as i32)) && rec.killed_pids.contains(&(b.id() as i32))
    );
    drop(wd);
}
