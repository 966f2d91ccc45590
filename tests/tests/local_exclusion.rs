//! Local exclusion: two processes of one host must never both hold one exclusive lease (issue
//! "two processes on one host are granted the same exclusive lease"). Disk Paxos excludes host
//! ids, so tenured itself must serialize its clients: one operation per resource in flight, and
//! every grant checked against held and in-flight leases (daemon/src/host/admission.rs).
//!
//! One tenured (host 1, io_timeout 1, no watchdog: nothing here loses a lockspace) with both
//! sockets. Oracle: every holder runs `tenure-counter` (tests/src/bin) while it holds the lease:
//! two holders inside at once make one of them exit 99, and the final count must equal the
//! number of grants. Racing rounds start every client of a round at once; the same test run
//! against a daemon with the check disabled (TENURE_UNSAFE_NO_LOCAL_EXCLUSION=1) must find
//! overlaps, which shows the check is what keeps them apart.
//!
//! The interleavings that need an operation held in flight use a resource on a loop device over
//! a FUSE file (tests/fixtures/stallfs.py) whose writes hang on command: an acquire, release or
//! conversion stays in flight for as long as the test needs it to.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tenure_tests::{
    fuse_available, is_root, loop_devices_available, prerequisite, sanlock_available, tenure_bin,
    tenured_bin, BackingFile, LoopDevice, StallFs,
};

const LS: &str = "R";
/// How long a holder stays inside the counter oracle, ms.
const HOLD_MS: u64 = 20;

fn counter_bin() -> &'static str {
    env!("CARGO_BIN_EXE_tenure-counter")
}

fn can_run() -> bool {
    prerequisite(is_root(), "root") && prerequisite(loop_devices_available(), "loop devices")
}

/// A formatted device: lockspace R at 0, resources `names` at 1M, 2M, …
fn format(dev: &str, lockspace: bool, names: &[&str]) {
    let ok = |args: &[&str]| {
        let out = Command::new(tenure_bin()).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    if lockspace {
        ok(&[
            "lockspace",
            "init",
            &format!("{LS}:0:{dev}:0"),
            "--io-timeout",
            "1",
        ]);
    }
    for (i, r) in names.iter().enumerate() {
        ok(&[
            "resource",
            "init",
            &format!("{LS}:{r}:{dev}:{}M", i + 1),
            "--num-hosts",
            "8",
        ]);
    }
}

/// One tenured host on a loop device, both sockets; optionally a second device whose writes
/// can be hung.
struct Bed {
    dir: tempfile::TempDir,
    child: Child,
    dev: LoopDevice,
    stall: Option<(LoopDevice, StallFs)>,
    _backing: BackingFile,
}

impl Bed {
    fn start(no_exclusion: bool, stall: bool) -> Bed {
        Bed::start_with(no_exclusion, stall, &[])
    }

    fn start_with(no_exclusion: bool, stall: bool, flags: &[&str]) -> Bed {
        let backing = BackingFile::new(16 << 20);
        let dev = LoopDevice::attach(backing.path(), 512);
        format(&dev.path_str(), true, &["r0", "r1", "r2", "r3", "r4"]);
        let stall = stall.then(|| {
            let fs = StallFs::start(16 << 20);
            let d = LoopDevice::attach(&fs.lun(), 512);
            format(&d.path_str(), false, &["s0", "s1", "s2"]);
            (d, fs)
        });
        let dir = tempfile::Builder::new()
            .prefix("tenured-lx-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let d = dir.path();
        let mut c = Command::new(tenured_bin());
        c.args(["--config", "/dev/null", "--run-dir"])
            .arg(d.join("run"))
            .arg("--state-dir")
            .arg(d.join("state"))
            // With hung writes, an I/O must not reach its deadline while the test holds an
            // operation in flight (a loaded CI machine stretches those moments): T = 5 there.
            .args([
                "--watchdog",
                "none",
                "--io-timeout",
                if stall.is_some() { "5" } else { "1" },
            ])
            .args(["--kill-grace", "2", "--sigkill-max", "2"])
            .arg("--lockspace")
            .arg(format!("{LS}:1:{}:0", dev.path_str()))
            .arg("--sanlock-compat")
            .arg("--sanlock-run-dir")
            .arg(d.join("sl"))
            .args(flags)
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("log")).unwrap());
        if no_exclusion {
            c.env("TENURE_UNSAFE_NO_LOCAL_EXCLUSION", "1");
        } else {
            c.env_remove("TENURE_UNSAFE_NO_LOCAL_EXCLUSION");
        }
        let child = c.spawn().unwrap();
        let bed = Bed {
            dir,
            child,
            dev,
            stall,
            _backing: backing,
        };
        bed.wait_joined();
        bed
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("run/tenured.sock")
    }

    fn tenure(&self, args: &[&str]) -> Command {
        let mut c = Command::new(tenure_bin());
        c.arg("--socket").arg(self.socket()).args(args);
        c
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.tenure(args).arg("--json").output().unwrap();
        assert!(
            out.status.success(),
            "tenure {args:?}: {}\n--- tenured ---\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// `tenure ARGS` that must fail; returns its stderr.
    fn refused(&self, args: &[&str]) -> String {
        let out = self.tenure(args).output().unwrap();
        assert!(!out.status.success(), "tenure {args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn wait_joined(&self) {
        let t0 = Instant::now();
        loop {
            if self.socket().exists() {
                if let Ok(out) = self.tenure(&["lockspace", "list", "--json"]).output() {
                    if let Ok(v) = serde_json::from_slice::<Value>(&out.stdout) {
                        if v["lockspaces"][0]["state"] == "joined" {
                            return;
                        }
                    }
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "not joined:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Resource `name` (the n-th formatted, from 1) on the plain device, as tenure specs it.
    fn res(&self, name: &str, mb: u64) -> String {
        format!("{LS}:{name}:{}:{mb}M", self.dev.path_str())
    }

    /// The same in sanlock's form (byte offset).
    fn sanlock_res(&self, name: &str, mb: u64) -> String {
        format!("{LS}:{name}:{}:{}", self.dev.path_str(), mb << 20)
    }

    /// Resource on the device whose writes can hang.
    fn sres(&self, name: &str, mb: u64) -> String {
        let (d, _) = self.stall.as_ref().expect("a bed with a stalling device");
        format!("{LS}:{name}:{}:{mb}M", d.path_str())
    }

    fn hang_writes(&self, on: bool) {
        self.stall.as_ref().expect("stall").1.hang_writes(on);
    }

    /// The leases tenured reports, as (resource, pid, shared).
    fn leases(&self) -> Vec<(String, i64, bool)> {
        let v = self.json(&["status"]);
        v["leases"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|l| {
                        (
                            l["resource"].as_str().unwrap_or("").to_owned(),
                            l["pid"].as_i64().unwrap_or(0),
                            l["shared"].as_bool().unwrap_or(false),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until tenured holds nothing and runs no operation.
    fn wait_idle(&self) {
        let t0 = Instant::now();
        loop {
            let v = self.json(&["status"]);
            let leases = v["leases"].as_array().map_or(0, Vec::len);
            if leases == 0 && v["operations_in_flight"] == 0 {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "{v}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits until tenured reports exactly `n` leases.
    fn wait_leases(&self, n: usize, within: Duration) -> Vec<(String, i64, bool)> {
        let t0 = Instant::now();
        loop {
            let l = self.leases();
            if l.len() == n {
                return l;
            }
            assert!(
                t0.elapsed() < within,
                "expected {n} leases, have {l:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Who holds `spec` on disk: (exclusive owner host id, shared holder host ids).
    fn owners(&self, spec: &str) -> (Option<u64>, Vec<u64>) {
        // A direct read of the area (no daemon): one report per disk.
        let v = self.json(&["resource", "owners", spec]);
        let d = &v[0]["owners"];
        let ex = d["exclusive"]["host_id"].as_u64();
        let sh = d["shared"]
            .as_array()
            .map(|a| a.iter().filter_map(|h| h["host_id"].as_u64()).collect())
            .unwrap_or_default();
        (ex, sh)
    }

    /// Waits until nothing holds `spec` on disk.
    fn wait_free_on_disk(&self, spec: &str) {
        let t0 = Instant::now();
        loop {
            let o = self.owners(spec);
            if o == (None, Vec::new()) {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "{spec} still held on disk: {o:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A holder of `specs` (comma-separated) through `tenure run` that stays until killed.
    fn holder(&self, specs: &str) -> Child {
        self.tenure(&run_args(specs, &["sleep", "600"]))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// A holder of `specs` that holds them: tenured then shows `n` leases.
    fn hold(&self, specs: &str, n: usize) -> Child {
        let t0 = Instant::now();
        let mut c = self.holder(specs);
        while self.leases().len() != n {
            if let Some(st) = c.try_wait().unwrap() {
                panic!("holder of {specs} exited {st:?}\n{}", self.log());
            }
            assert!(t0.elapsed() < Duration::from_secs(20), "{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        c
    }

    /// `tenure run` of `specs` (comma-separated) and `true`, which must be refused: its stderr.
    fn run_refused(&self, specs: &str) -> String {
        self.refused(&run_args(specs, &["true"]))
    }

    /// `tenure run` of `specs` and `true` succeeds (the CLI itself waits for a release of
    /// them still being written).
    fn run_ok(&self, specs: &str) {
        let out = self.tenure(&run_args(specs, &["true"])).output().unwrap();
        assert!(out.status.success(), "{specs}: {out:?}\n{}", self.log());
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        if let Some((_, fs)) = &self.stall {
            fs.hang_writes(false);
        }
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.wait();
    }
}

/// `run --lease A --lease B … -- CMD`.
fn run_args<'a>(specs: &'a str, cmd: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["run"];
    for s in specs.split(',') {
        a.extend(["--lease", s]);
    }
    a.push("--");
    a.extend(cmd);
    a
}

/// Kills and reaps a child (by pid), ignoring one that already ended.
fn end(mut c: Child) {
    let _ = c.kill();
    let _ = c.wait();
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Via {
    /// `tenure run --lease RES -- tenure-counter …` (the native socket).
    Run,
    /// `sanlock client command -r RES -c tenure-counter …` (the sanlock socket).
    SanlockCommand,
}

#[derive(Debug, Default)]
struct Tally {
    rounds: usize,
    grants: usize,
    overlaps: usize,
    /// Refusals by the answer the client printed.
    refused: BTreeMap<String, usize>,
}

/// One client's try: the exit status and what it printed.
fn try_once(bed: &Bed, via: Via, counter: &Path) -> Output {
    let c = counter.to_str().unwrap();
    let ms = HOLD_MS.to_string();
    match via {
        Via::Run => bed
            .tenure(&[
                "run",
                "--lease",
                &bed.res("r0", 1),
                "--",
                counter_bin(),
                c,
                &ms,
            ])
            .output()
            .unwrap(),
        Via::SanlockCommand => Command::new("sanlock")
            .args(["client", "command", "-r", &bed.sanlock_res("r0", 1), "-c"])
            .args([counter_bin(), c, &ms])
            .env("SANLOCK_RUN_DIR", bed.dir.path().join("sl"))
            .output()
            .unwrap(),
    }
}

/// What a refused client said, reduced to the answer (tenure's code, sanlock's result).
fn refusal(via: Via, out: &Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let known: &[&str] = match via {
        Via::Run => &["(Busy)", "(Exists)", "(Releasing)"],
        Via::SanlockCommand => &["-16", "-17", "-11"],
    };
    known
        .iter()
        .find(|k| text.contains(*k))
        .map_or_else(|| format!("unexpected: {text}"), |k| (*k).to_owned())
}

/// `rounds` rounds of `clients` clients started at once on r0; stops early after
/// `stop_after_overlaps` overlaps (when non-zero).
fn race(bed: &Bed, via: Via, clients: usize, rounds: usize, stop_after_overlaps: usize) -> Tally {
    let counter = bed.dir.path().join(format!("counter-{via:?}-{clients}"));
    let _ = std::fs::remove_file(&counter);
    let mut t = Tally::default();
    for _ in 0..rounds {
        // Each round starts from a free lease: the last round's release has ended.
        bed.wait_idle();
        let barrier = std::sync::Barrier::new(clients);
        let outs: Vec<Output> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..clients)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        try_once(bed, via, &counter)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        t.rounds += 1;
        for o in &outs {
            match o.status.code() {
                Some(0) => t.grants += 1,
                Some(99) => {
                    t.grants += 1;
                    t.overlaps += 1;
                }
                _ => *t.refused.entry(refusal(via, o)).or_insert(0) += 1,
            }
        }
        if stop_after_overlaps > 0 && t.overlaps >= stop_after_overlaps {
            break;
        }
    }
    if t.overlaps == 0 {
        let bytes = std::fs::read(&counter).unwrap_or_default();
        let count = bytes
            .get(..8)
            .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()));
        assert_eq!(
            count as usize,
            t.grants,
            "the counter lost visits: {t:?}\n{}",
            bed.log()
        );
    }
    t
}

fn assert_exclusive(bed: &Bed, via: Via, clients: usize, rounds: usize) {
    let t = race(bed, via, clients, rounds, 0);
    eprintln!("{via:?}, {clients} clients: {t:?}");
    assert_eq!(t.overlaps, 0, "{t:?}\n{}", bed.log());
    assert!(
        t.refused.keys().all(|k| !k.starts_with("unexpected")),
        "{t:?}"
    );
    // Every round grants the lease to someone: each starts from a free lease, and a refusal
    // is only ever for a local holder or operation.
    assert!(t.grants >= rounds, "{t:?}\n{}", bed.log());
    // Racing clients meet the other's acquire in flight or its hold.
    assert!(t.refused.values().sum::<usize>() > 0, "{t:?}");
}

#[test]
fn racing_clients_of_one_host_never_share_an_exclusive_lease() {
    if !can_run() || !sanlock_available() {
        return;
    }
    let bed = Bed::start(false, false);
    assert_exclusive(&bed, Via::Run, 2, 1000);
    assert_exclusive(&bed, Via::SanlockCommand, 2, 1000);
    assert_exclusive(&bed, Via::Run, 8, 150);
    assert_exclusive(&bed, Via::SanlockCommand, 8, 150);
    assert!(bed.leases().is_empty());
    bed.wait_free_on_disk(&bed.res("r0", 1));
}

#[test]
fn without_the_check_racing_clients_do_share_the_lease() {
    if !can_run() || !sanlock_available() {
        return;
    }
    let bed = Bed::start(true, false);
    assert!(
        bed.log().contains("TENURE_UNSAFE_NO_LOCAL_EXCLUSION"),
        "the daemon must say loudly that the check is off:\n{}",
        bed.log()
    );
    for via in [Via::Run, Via::SanlockCommand] {
        let t = race(&bed, via, 2, 300, 3);
        eprintln!("check disabled, {via:?}: {t:?}");
        assert!(
            t.overlaps >= 3,
            "the oracle must catch two local holders once the check is off: {t:?}"
        );
    }
}

/// The interleavings of the audit that hinge on an operation in flight, each held there by
/// hung writes, and the ones between holders. Each asserts the answer (as sanlock's daemon
/// gives it) and that nothing leaked: tenured's leases, and what the disk says.
#[test]
fn every_same_host_interleaving_gets_sanlocks_answer_and_leaks_nothing() {
    if !can_run() || !fuse_available() {
        return;
    }
    let bed = Bed::start(false, true);
    let (r0, r1, r2) = (bed.res("r0", 1), bed.res("r1", 2), bed.res("r2", 3));
    let (s0, s1) = (bed.sres("s0", 1), bed.sres("s1", 2));
    let sh = |s: &str| format!("{s}:SH");

    // Held exclusive: a second exclusive or shared acquirer is refused as held (EEXIST) —
    // also when it reaches the lease through another device of the same storage, and through
    // the sanlock socket.
    let a = bed.hold(&r0, 1);
    let alias = LoopDevice::attach(bed._backing.path(), 512);
    let r0_alias = format!("{LS}:r0:{}:1M", alias.path_str());
    for spec in [r0.clone(), sh(&r0), r0_alias] {
        let e = bed.run_refused(&spec);
        assert!(e.contains("(Exists)"), "{spec}: {e}");
    }
    if sanlock_available() {
        let out = Command::new("sanlock")
            .args([
                "client",
                "command",
                "-r",
                &bed.sanlock_res("r0", 1),
                "-c",
                "/bin/true",
            ])
            .env("SANLOCK_RUN_DIR", bed.dir.path().join("sl"))
            .output()
            .unwrap();
        assert_eq!(refusal(Via::SanlockCommand, &out), "-17", "{out:?}");
    }
    end(a);
    bed.wait_leases(0, Duration::from_secs(10));

    // Shared ∥ shared: both hold; this host has one SHARED mode block on disk, kept until the
    // last local holder goes. Shared ∥ exclusive: refused as held.
    let a = bed.hold(&sh(&r0), 1);
    let b = bed.hold(&sh(&r0), 2);
    let l = bed.leases();
    assert!(l.iter().all(|(_, _, shared)| *shared), "{l:?}");
    assert_eq!(bed.owners(&r0), (None, vec![1]));
    let e = bed.run_refused(&r0);
    assert!(e.contains("(Exists)"), "{e}");
    end(a);
    bed.wait_leases(1, Duration::from_secs(10));
    assert_eq!(
        bed.owners(&r0),
        (None, vec![1]),
        "the other local holder still holds it shared on disk"
    );
    end(b);
    bed.wait_leases(0, Duration::from_secs(10));
    bed.wait_free_on_disk(&r0);

    // Multi-resource acquires with overlapping sets: all or nothing, no partial grant.
    let a = bed.hold(&format!("{r0},{r1}"), 2);
    let e = bed.run_refused(&format!("{r1},{r2}"));
    assert!(e.contains("(Exists)"), "{e}");
    assert_eq!(bed.leases().len(), 2);
    assert_eq!(bed.owners(&r2), (None, vec![]), "r2 was not taken");
    end(a);
    bed.wait_leases(0, Duration::from_secs(10));

    // A shared acquire of several resources joins this host's hold of one and acquires the
    // other; when its other resource fails, the joiner leaves nothing behind.
    let a = bed.hold(&sh(&r0), 1);
    let b = bed.hold(&format!("{},{}", sh(&r0), sh(&r1)), 3);
    end(a);
    bed.wait_leases(2, Duration::from_secs(10));
    assert_eq!(bed.owners(&r0), (None, vec![1]));
    end(b);
    bed.wait_leases(0, Duration::from_secs(10));
    bed.wait_free_on_disk(&r0);
    bed.wait_free_on_disk(&r1);
    let a = bed.hold(&sh(&r0), 1);
    let unformatted = format!("{LS}:nothing:{}:9M", bed.dev.path_str());
    let e = bed.run_refused(&format!("{},{}", sh(&r0), sh(&unformatted)));
    assert!(!e.is_empty());
    assert_eq!(bed.leases().len(), 1, "the joiner's share is gone");
    end(a);
    bed.wait_leases(0, Duration::from_secs(10));
    bed.wait_free_on_disk(&r0);

    // Acquire ∥ acquire: the first is in flight (writes hang); the second is refused as busy
    // (EBUSY), exclusive or shared, and so is an overlapping multi-resource acquire, which
    // takes nothing of its other resource.
    bed.hang_writes(true);
    let a = bed.holder(&s0);
    std::thread::sleep(Duration::from_millis(300));
    for spec in [s0.clone(), sh(&s0), format!("{s1},{s0}")] {
        let e = bed.run_refused(&spec);
        assert!(e.contains("(Busy)"), "{spec}: {e}");
    }
    // Operators see why: status names the operation in flight.
    let v = bed.json(&["status"]);
    assert_eq!(
        v["resources_in_flight"],
        serde_json::json!([{"lockspace": LS, "resource": "s0", "operation": "acquire"}]),
        "{v}"
    );
    let human = bed.tenure(&["status"]).output().unwrap();
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(human.contains("in flight: R:s0 (acquire)"), "{human}");
    bed.hang_writes(false);
    bed.wait_leases(1, Duration::from_secs(20));
    assert_eq!(bed.owners(&s1), (None, vec![]), "s1 was not taken");

    // Acquire ∥ release by another client: while the holder's release is written, a new
    // acquirer is told to try again (sanlock socket: −11 EAGAIN); the CLI tries again by itself
    // and gets the lease once the release has ended.
    bed.hang_writes(true);
    end(a);
    std::thread::sleep(Duration::from_millis(300));
    if sanlock_available() {
        let (d, _) = bed.stall.as_ref().unwrap();
        let out = Command::new("sanlock")
            .args(["client", "command", "-r"])
            .arg(format!("{LS}:s0:{}:{}", d.path_str(), 1 << 20))
            .args(["-c", "/bin/true"])
            .env("SANLOCK_RUN_DIR", bed.dir.path().join("sl"))
            .output()
            .unwrap();
        assert_eq!(refusal(Via::SanlockCommand, &out), "-11", "{out:?}");
    }
    assert_eq!(
        bed.json(&["status"])["resources_in_flight"][0]["operation"],
        "release"
    );
    let mut waiting = bed
        .tenure(&run_args(&s0, &["true"]))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        waiting.try_wait().unwrap().is_none(),
        "tenure run waits while the release is written"
    );
    bed.hang_writes(false);
    let out = waiting.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}\n{}", bed.log());
    bed.wait_leases(0, Duration::from_secs(20));

    // Acquire ∥ convert: while a holder converts (writes hang), another acquirer is busy;
    // a conversion to exclusive while another local process holds it shared is refused.
    let a = bed.hold(&s0, 1);
    let pa = a.id().to_string();
    bed.hang_writes(true);
    let conv = bed
        .tenure(&["resource", "convert", "-p", &pa, &format!("{LS}:s0")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let e = bed.run_refused(&sh(&s0));
    assert!(e.contains("(Busy)"), "{e}");
    bed.hang_writes(false);
    let out = conv.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}\n{}", bed.log());
    let b = bed.hold(&sh(&s0), 2);
    let e = bed.refused(&[
        "resource",
        "convert",
        "--exclusive",
        "-p",
        &pa,
        &format!("{LS}:s0"),
    ]);
    assert!(e.contains("(Busy)") && e.contains("other processes"), "{e}");
    end(a);
    end(b);
    bed.wait_leases(0, Duration::from_secs(20));
    bed.wait_free_on_disk(&s0);

    // Acquire for a pid ∥ that pid's own acquire: one is refused (busy while in flight,
    // held after).
    let sleeper = bed
        .tenure(&["run", "--lease", &r2, "--", "sleep", "600"])
        .spawn()
        .unwrap();
    let sp = sleeper.id().to_string();
    bed.wait_leases(1, Duration::from_secs(10));
    bed.hang_writes(true);
    let for_pid = bed
        .tenure(&["resource", "acquire", "-p", &sp, &s1])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let e = bed.run_refused(&s1);
    assert!(e.contains("(Busy)"), "{e}");
    bed.hang_writes(false);
    assert!(for_pid.wait_with_output().unwrap().status.success());
    let l = bed.wait_leases(2, Duration::from_secs(10));
    assert!(
        l.iter().any(|(r, p, _)| r == "s1" && p.to_string() == sp),
        "{l:?}"
    );
    let e = bed.refused(&["resource", "acquire", "-p", &sp, &s1]);
    assert!(e.contains("(Exists)"), "{e}");
    // The pid exits: both its leases go.
    end(sleeper);
    bed.wait_leases(0, Duration::from_secs(20));
    bed.wait_free_on_disk(&s1);

    // A client dying mid-acquire: the lease it won is released, not leaked; the next client
    // gets it.
    bed.hang_writes(true);
    let a = bed.holder(&s0);
    std::thread::sleep(Duration::from_millis(300));
    end(a);
    bed.hang_writes(false);
    // Its acquire goes on after the writes resume: free on disk and no lease listed are
    // true before it ends too, so wait for it to end first.
    bed.wait_idle();
    bed.wait_free_on_disk(&s0);
    bed.wait_leases(0, Duration::from_secs(20));
    bed.run_ok(&s0);
}

/// Another host's death is judged with the W assumed for other hosts: sanlock's 60 s unless
/// told, whatever this host's own W; assuming the others fence faster than we do is refused.
#[test]
fn other_hosts_are_assumed_to_fire_after_60_s_unless_told() {
    if !can_run() {
        return;
    }
    let bed = Bed::start_with(false, false, &["--fire-timeout", "8"]);
    let v = bed.json(&["lockspace", "list"]);
    let ls = &v["lockspaces"][0];
    assert_eq!(ls["other_hosts_fire_timeout_s"], 60, "{v}");
    assert_eq!(ls["host_dead_after_s"], 8 + 60, "8T + W at T = 1: {v}");
    drop(bed);
    let bed = Bed::start_with(
        false,
        false,
        &["--fire-timeout", "8", "--other-hosts-fire-timeout", "8"],
    );
    let v = bed.json(&["lockspace", "list"]);
    assert_eq!(v["lockspaces"][0]["host_dead_after_s"], 16, "{v}");
    drop(bed);
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let mut c = Command::new(tenured_bin())
        .args(["--config", "/dev/null", "--watchdog", "none", "--run-dir"])
        .arg(dir.path().join("run"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["--fire-timeout", "60", "--other-hosts-fire-timeout", "8"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let st = loop {
        if let Some(st) = c.try_wait().unwrap() {
            break st;
        }
        if t0.elapsed() > Duration::from_secs(10) {
            end(c);
            panic!("tenured started with other hosts' W below its own");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut e = String::new();
    std::io::Read::read_to_string(&mut c.stderr.take().unwrap(), &mut e).unwrap();
    assert!(
        !st.success() && e.contains("other_hosts_fire_timeout_s = 8"),
        "{st:?}: {e}"
    );
}

/// The mixed-cluster hazard: a tenured host whose own watchdog fires after 8 s must still judge
/// a paused sanlock 3.8.5 host (W = 60) dead only 8T + 60 s after the last renewal it saw —
/// before the W assumed for other hosts existed, tenured took such a host's lease 15.2 s after
/// the pause, while the sanlock host could have resumed writing until 60 s after its last
/// keepalive.
#[test]
fn a_paused_sanlock_host_keeps_its_lease_until_8t_plus_its_w() {
    if !can_run() || !sanlock_available() {
        return;
    }
    let _one = tenure_tests::sanlock_lock();
    let took = paused_sanlock_taken_after(&["--fire-timeout", "8"]);
    eprintln!("tenured (own W 8 s) took the paused sanlock host's lease {took:?} after the pause");
    // 8T + 60 after the last renewal seen, which was at most 2T (its renewal interval) before
    // the pause: at T = 1 no earlier than 66 s after it.
    assert!(
        took >= Duration::from_secs(66),
        "taken {took:?} after the pause: before the sanlock host was sure to be reset"
    );
    assert!(took < Duration::from_secs(80), "never taken: {took:?}");
    // The W assumed for others is what decides: told the others fire after 8 s too, tenured
    // takes it at 8T + 8 (the figure of the hazard).
    let took =
        paused_sanlock_taken_after(&["--fire-timeout", "8", "--other-hosts-fire-timeout", "8"]);
    eprintln!("... and assuming the others' W is 8 s: {took:?}");
    assert!(
        took >= Duration::from_secs(14) && took < Duration::from_secs(30),
        "{took:?}"
    );
}

/// How long after a sanlock host holding r1 is paused tenured (started with `flags`) takes it.
fn paused_sanlock_taken_after(flags: &[&str]) -> Duration {
    let bed = Bed::start_with(false, false, flags);
    let alias = LoopDevice::attach(bed._backing.path(), 512);
    let sl = tenure_tests::SanlockDaemon::start();
    let out = sl.client(&[
        "add_lockspace",
        "-s",
        &format!("{LS}:2:{}:0", alias.path_str()),
        "-o",
        "1",
    ]);
    assert!(out.status.success(), "{out:?}");
    // A sanlock client holds r1 (host 2) until killed.
    let mut holder = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(format!(
            "import sanlock, sys, time\nfd = sanlock.register()\nsanlock.acquire(b\"{LS}\", b\"r1\", [(\"{}\", {})], slkfd=fd)\nprint(\"OK\", flush=True)\ntime.sleep(600)",
            alias.path_str(),
            2u64 << 20
        ))
        .env("SANLOCK_RUN_DIR", sl.rundir())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "OK", "sanlock acquired r1");
    let r1 = bed.res("r1", 2);
    let e = bed.run_refused(&r1);
    assert!(
        e.contains("(OwnerAlive") || e.contains("(OwnedRetry"),
        "{e}"
    );
    // Pause the sanlock host while time runs.
    let pid = nix::unistd::Pid::from_raw(sl.pid());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let paused = Instant::now();
    let took = loop {
        let out = bed
            .tenure(&["run", "--no-wait", "--lease", &r1, "--", "true"])
            .output()
            .unwrap();
        if out.status.success() {
            break paused.elapsed();
        }
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(
            e.contains("(OwnedRetry") || e.contains("(OwnerAlive"),
            "{e}"
        );
        if paused.elapsed() > Duration::from_secs(120) {
            break paused.elapsed();
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
    end(holder);
    took
}
