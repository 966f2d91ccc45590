//! tenure-tests: helpers for tests that need real kernels, devices and peers — loop devices
//! over a shared backing file, a real sanlock daemon, the `tenure` binary.
//!
//! Invariants: everything a helper creates (loop devices, daemons, temporary files) is
//! removed by its `Drop`, so a failing test cleans up too. A test whose prerequisites are
//! missing prints why it skips — unless `TENURE_TEST_REQUIRE_ALL=1` (set by the CI test
//! script), where a missing prerequisite is a failure, so CI can never pass by skipping.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tenure_format::LeaderRecord;

/// The workspace root (this crate lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// `../shared` beside the workspace (sanlock-anchor lives there).
pub fn shared_dir() -> PathBuf {
    workspace_root().join("../shared")
}

/// Returns false (after printing why) when `ok` is false and skipping is allowed; panics
/// when `TENURE_TEST_REQUIRE_ALL=1`.
pub fn prerequisite(ok: bool, what: &str) -> bool {
    if ok {
        return true;
    }
    if std::env::var("TENURE_TEST_REQUIRE_ALL").as_deref() == Ok("1") {
        panic!("prerequisite missing and TENURE_TEST_REQUIRE_ALL=1: {what}");
    }
    eprintln!("SKIPPED: {what}");
    false
}

/// True when running as root.
pub fn is_root() -> bool {
    // Effective uid from /proc keeps this crate free of unsafe code.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

fn on_path(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Root, losetup and /dev/loop-control are present.
pub fn loop_devices_available() -> bool {
    prerequisite(is_root(), "loop-device tests need root")
        && prerequisite(on_path("losetup"), "losetup is not installed")
        && prerequisite(
            Path::new("/dev/loop-control").exists(),
            "/dev/loop-control is missing",
        )
}

/// Loop devices plus the sanlock 3.8 tools and python3-sanlock.
pub fn sanlock_available() -> bool {
    loop_devices_available()
        && prerequisite(
            on_path("sanlock"),
            "sanlock is not installed (the test script installs it)",
        )
        && prerequisite(
            Command::new("/usr/bin/python3")
                .args(["-c", "import sanlock"])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
            "python3-sanlock is not installed",
        )
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs a command and panics with its output unless it succeeds; returns stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A sparse backing file in a temporary directory on a disk file system (not tmpfs), removed
/// on drop.
#[derive(Debug)]
pub struct BackingFile {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl BackingFile {
    /// A zero-filled sparse file of `size` bytes.
    pub fn new(size: u64) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("tenure-test-")
            .tempdir_in("/var/tmp")
            .expect("temp dir in /var/tmp");
        let path = dir.path().join("lun");
        File::create(&path)
            .and_then(|f| f.set_len(size))
            .expect("backing file");
        BackingFile { _dir: dir, path }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A loop device with direct I/O over a backing file, detached on drop.
#[derive(Debug)]
pub struct LoopDevice {
    path: PathBuf,
}

impl LoopDevice {
    /// Attaches `file` with `--direct-io=on --sector-size sector_size` and checks that the
    /// kernel really uses direct I/O and the requested logical block size.
    pub fn attach(file: &Path, sector_size: u32) -> Self {
        // Concurrent `losetup -f` calls can pick the same free device, and one then fails
        // with EBUSY: attach one at a time within this process, and retry for others.
        static ATTACH: Mutex<()> = Mutex::new(());
        let _one_at_a_time = ATTACH
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let attach = || {
            let mut cmd = Command::new("losetup");
            cmd.args(["-f", "--show", "--direct-io=on", "--sector-size"])
                .arg(sector_size.to_string())
                .arg(file);
            cmd
        };
        let mut tries = 0;
        let out = loop {
            tries += 1;
            let out = run(&mut attach());
            if out.status.success() {
                break String::from_utf8_lossy(&out.stdout).into_owned();
            }
            assert!(
                tries < 5,
                "losetup failed {tries} times: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let dev = LoopDevice {
            path: PathBuf::from(out.trim()),
        };
        let name = dev
            .path
            .file_name()
            .expect("device name")
            .to_string_lossy()
            .into_owned();
        let dio =
            std::fs::read_to_string(format!("/sys/block/{name}/loop/dio")).unwrap_or_default();
        assert_eq!(
            dio.trim(),
            "1",
            "{} fell back to buffered I/O",
            dev.path.display()
        );
        let lbs = std::fs::read_to_string(format!("/sys/block/{name}/queue/logical_block_size"))
            .unwrap_or_default();
        assert_eq!(
            lbs.trim(),
            sector_size.to_string(),
            "{} logical block size",
            dev.path.display()
        );
        dev
    }

    /// `/dev/loopN`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path as a string (for lockspace and resource strings).
    pub fn path_str(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
    }
}

/// Serialises tests that run a sanlock daemon: one at a time keeps them independent of
/// sanlock's process-wide state (log files, helper process, lockspace table).
pub fn sanlock_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A real sanlock daemon (no watchdog) started by ../shared/tools/sanlock-anchor/start.sh,
/// with its own run directory; shut down and killed (by pid) on drop.
#[derive(Debug)]
pub struct SanlockDaemon {
    rundir: tempfile::TempDir,
    pid: i32,
}

impl SanlockDaemon {
    /// Starts the daemon and waits until it answers.
    pub fn start() -> Self {
        let rundir = tempfile::Builder::new()
            .prefix("tenure-sanlock-")
            .tempdir_in("/var/tmp")
            .expect("run dir");
        let script = shared_dir().join("tools/sanlock-anchor/start.sh");
        let out = run_ok(Command::new("bash").arg(&script).arg(rundir.path()));
        let pid: i32 = out
            .trim()
            .lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or_else(|| panic!("start.sh printed {out:?}"));
        SanlockDaemon { rundir, pid }
    }

    /// The run directory (SANLOCK_RUN_DIR).
    pub fn rundir(&self) -> &Path {
        self.rundir.path()
    }

    /// `sanlock client ...` against this daemon.
    pub fn client(&self, args: &[&str]) -> Output {
        run(Command::new("sanlock")
            .arg("client")
            .args(args)
            .env("SANLOCK_RUN_DIR", self.rundir()))
    }

    /// Runs a python3-sanlock script against this daemon; panics unless it exits 0.
    pub fn python(&self, script: &str) -> String {
        run_ok(
            Command::new("/usr/bin/python3")
                .arg("-c")
                .arg(script)
                .env("SANLOCK_RUN_DIR", self.rundir()),
        )
    }

    /// Runs a python3-sanlock script against this daemon; returns stdout and stderr, whatever
    /// the exit status.
    pub fn python_result(&self, script: &str) -> String {
        let out = run(Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(script)
            .env("SANLOCK_RUN_DIR", self.rundir()));
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// The daemon's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }
}

impl Drop for SanlockDaemon {
    fn drop(&mut self) {
        let _ = Command::new("sanlock")
            .args(["client", "shutdown", "-f", "1"])
            .env("SANLOCK_RUN_DIR", self.rundir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline
            && Path::new(&format!("/proc/{}", self.pid)).exists()
            && !is_zombie(self.pid)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = Command::new("kill")
            .args(["-9", &self.pid.to_string()])
            .stderr(Stdio::null())
            .status();
    }
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.contains(") Z "))
        .unwrap_or(true)
}

/// `sanlock direct ...` (no daemon).
pub fn sanlock_direct(args: &[&str]) -> String {
    run_ok(Command::new("sanlock").arg("direct").args(args))
}

/// Path of the `tenure` binary, built (once per test process) from the current sources with
/// the same profile as the running test, so tests never exercise a stale binary.
pub fn tenure_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_bin("tenure")).clone()
}

/// Where the tests' tenured daemons keep the bytes their clients send (`TENURE_CAPTURE_DIR`):
/// the seed corpus of the socket decoders' fuzz targets (daemon/fuzz, scripts/fuzz.sh).
pub fn capture_dir() -> PathBuf {
    workspace_root().join("target/fuzz-captures")
}

/// Path of the `tenured` binary, built like [`tenure_bin`].
pub fn tenured_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_bin("tenured")).clone()
}

fn build_bin(name: &str) -> PathBuf {
    {
        let exe = std::env::current_exe().expect("current exe");
        // target/<profile>/deps/<test> → target/<profile>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>")
            .to_owned();
        let target_dir = profile_dir.parent().expect("target dir").to_owned();
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args([
            "build",
            "--quiet",
            "-p",
            "tenured",
            "--bin",
            name,
            "--target-dir",
        ])
        .arg(&target_dir);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        cmd.current_dir(workspace_root());
        run_ok(&mut cmd);
        profile_dir.join(name)
    }
}

/// Runs `tenure` with `args`; returns the whole output (any exit status).
pub fn tenure(args: &[&str]) -> Output {
    run(Command::new(tenure_bin()).args(args))
}

/// Runs `tenure` and panics unless it exits 0; returns stdout.
pub fn tenure_ok(args: &[&str]) -> String {
    run_ok(Command::new(tenure_bin()).args(args))
}

/// `tenure dump --json` of `target`, parsed.
pub fn tenure_dump_json(target: &str) -> (i32, serde_json::Value) {
    let out = tenure(&["dump", target, "--json"]);
    let code = out.status.code().unwrap_or(-1);
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "dump --json is not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, v)
}

/// Parses `sanlock direct read_leader` output ("key value" lines) into pairs.
pub fn parse_read_leader(text: &str) -> Vec<(String, String)> {
    text.lines()
        .take_while(|l| !l.starts_with('$'))
        .filter(|l| !l.starts_with("read_leader"))
        .filter_map(|l| {
            l.split_once(' ')
                .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        })
        .collect()
}

/// Asserts that every field `sanlock direct read_leader` printed (`sanlock_out`) equals
/// tenure's decoding of the same sector; names are compared in their escaped form.
pub fn assert_matches_read_leader(rec: &LeaderRecord, sanlock_out: &str, what: &str) {
    let fields = parse_read_leader(sanlock_out);
    assert!(fields.len() >= 17, "{what}: sanlock printed {sanlock_out}");
    for (k, v) in fields {
        let ours: u64 = match k.as_str() {
            "space_name" => {
                assert_eq!(rec.space_name.escaped(), v, "{what}: space_name");
                continue;
            }
            "resource_name" => {
                assert_eq!(rec.resource_name.escaped(), v, "{what}: resource_name");
                continue;
            }
            "magic" => rec.magic.into(),
            "version" => rec.version.into(),
            "flags" => rec.flags.into(),
            "sector_size" => rec.sector_size.into(),
            "num_hosts" => rec.num_hosts,
            "max_hosts" => rec.max_hosts,
            "owner_id" => rec.owner_id,
            "owner_generation" => rec.owner_generation,
            "lver" => rec.lver,
            "timestamp" => rec.timestamp,
            "checksum" => rec.checksum.into(),
            "io_timeout" => rec.io_timeout.into(),
            // sanlock prints the delta lease's host-event fields as extra1..3.
            "write_id" | "extra1" => rec.write_id,
            "write_generation" | "extra2" => rec.write_generation,
            "write_timestamp" | "extra3" => rec.write_timestamp,
            other => panic!("{what}: unknown read_leader field {other}"),
        };
        let theirs = match v.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => v.parse::<u64>(),
        }
        .unwrap_or_else(|e| panic!("{what}: {k} = {v:?}: {e}"));
        assert_eq!(ours, theirs, "{what}: field {k}");
    }
}

/// FUSE, fusermount and python3-fusepy are present (for [`StallFs`]).
pub fn fuse_available() -> bool {
    prerequisite(is_root(), "FUSE stall tests need root")
        && prerequisite(Path::new("/dev/fuse").exists(), "/dev/fuse is missing")
        && prerequisite(
            on_path("fusermount"),
            "fusermount is not installed (fuse3 package)",
        )
        && prerequisite(
            Command::new("/usr/bin/python3")
                .args(["-c", "import fusepy"])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
            "python3-fusepy is not installed",
        )
}

/// A FUSE file (tests/fixtures/stallfs.py) whose reads and writes can be made to hang or fail
/// on command: put a loop device on [`StallFs::lun`] to get a block device with exact faults.
/// Dropping it releases every fault, unmounts, and kills the file system process.
#[derive(Debug)]
pub struct StallFs {
    dir: tempfile::TempDir,
    child: std::process::Child,
}

impl StallFs {
    /// Mounts a file system exposing one `size`-byte file.
    pub fn start(size: u64) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("tenure-stallfs-")
            .tempdir_in("/var/tmp")
            .expect("dir");
        for sub in ["mnt", "control"] {
            std::fs::create_dir(dir.path().join(sub)).expect("subdir");
        }
        File::create(dir.path().join("backing"))
            .and_then(|f| f.set_len(size))
            .expect("backing");
        let child = Command::new("/usr/bin/python3")
            .arg(workspace_root().join("tests/fixtures/stallfs.py"))
            .arg(dir.path().join("backing"))
            .arg(dir.path().join("mnt"))
            .arg(dir.path().join("control"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 stallfs.py");
        let fs = StallFs { dir, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !fs.lun().exists() {
            assert!(Instant::now() < deadline, "stallfs did not mount");
            std::thread::sleep(Duration::from_millis(20));
        }
        fs
    }

    /// The plain file behind the FUSE file (other hosts attach their loop devices here: they
    /// see the same bytes without the faults).
    pub fn backing(&self) -> PathBuf {
        self.dir.path().join("backing")
    }

    /// The FUSE-backed file.
    pub fn lun(&self) -> PathBuf {
        self.dir.path().join("mnt/lun")
    }

    /// The directory whose flag files (`hang_writes`, `hang_reads`, `eio_writes`,
    /// `eio_reads`) switch the faults, for scripts that drive them themselves.
    pub fn control_dir(&self) -> PathBuf {
        self.dir.path().join("control")
    }

    fn flag(&self, name: &str, on: bool) {
        let p = self.dir.path().join("control").join(name);
        if on {
            File::create(&p).expect("control flag");
        } else {
            let _ = std::fs::remove_file(&p);
        }
    }

    /// Writes block while on.
    pub fn hang_writes(&self, on: bool) {
        self.flag("hang_writes", on);
    }

    /// Reads block while on.
    pub fn hang_reads(&self, on: bool) {
        self.flag("hang_reads", on);
    }

    /// Writes fail with EIO while on.
    pub fn eio_writes(&self, on: bool) {
        self.flag("eio_writes", on);
    }
}

impl Drop for StallFs {
    fn drop(&mut self) {
        for f in ["hang_writes", "hang_reads", "eio_writes", "eio_reads"] {
            self.flag(f, false);
        }
        let mnt = self.dir.path().join("mnt");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !Command::new("fusermount")
            .arg("-u")
            .arg(&mnt)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            if Instant::now() > deadline {
                let _ = Command::new("umount").arg("-l").arg(&mnt).status();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a [`LockspaceThread`] last saw.
#[derive(Clone, Debug, Default)]
pub struct LockspaceSnapshot {
    /// Where the lockspace stands.
    pub state: Option<tenure_core::lockspace::LockspaceState>,
    /// Every host id seen, with its status.
    pub hosts: Vec<(
        tenure_core::delta::HostEntry,
        tenure_core::delta::HostStatus,
    )>,
}

impl LockspaceSnapshot {
    /// Our generation, when joined.
    pub fn generation(&self) -> Option<u64> {
        match self.state {
            Some(tenure_core::lockspace::LockspaceState::Joined { generation }) => Some(generation),
            _ => None,
        }
    }

    /// Status and generation of `host_id` (FREE and 0 when never seen).
    pub fn host(&self, host_id: u64) -> (tenure_core::delta::HostStatus, u64) {
        self.hosts
            .iter()
            .find(|(e, _)| e.host_id == host_id)
            .map_or((tenure_core::delta::HostStatus::Free, 0), |(e, s)| {
                (*s, e.generation)
            })
    }
}

/// A tenure host holding one lockspace in a thread of a `std::thread::scope`, publishing
/// snapshots; it stops (without leaving: like a crash) when dropped, or leaves on request.
#[derive(Debug)]
pub struct LockspaceThread {
    snap: std::sync::Arc<Mutex<LockspaceSnapshot>>,
    leave: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl LockspaceThread {
    /// Joins `cfg`'s lockspace through `device` (io_uring engine) in a scoped thread.
    pub fn spawn<'s>(
        s: &'s std::thread::Scope<'s, '_>,
        device: &'s Path,
        cfg: tenure_core::delta::DeltaConfig,
    ) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        use tenure_core::lockspace::{LockspaceSet, LockspaceState};
        let snap = Arc::new(Mutex::new(LockspaceSnapshot::default()));
        let (leave, stop) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let (snap2, leave2, stop2) = (Arc::clone(&snap), Arc::clone(&leave), Arc::clone(&stop));
        s.spawn(move || {
            let clock = tenure_core::clock::MonotonicClock;
            let config = tenure_core::io::EngineConfig {
                ring_entries: 16,
                buffer_classes: vec![(4096, 16), (8 << 20, 2)],
                sync_workers: 1,
            };
            let dev = tenure_core::dev::Device::open(device, tenure_core::dev::Access::ReadWrite)
                .expect("open");
            let (backend, _) = tenure_core::io::open_backend(
                vec![dev],
                &config,
                tenure_core::io::BackendKind::Uring,
            )
            .expect("engine");
            let mut set = LockspaceSet::new(backend);
            let ls = set.add(cfg, tenure_core::io::DiskId(0)).expect("add");
            set.join(ls, clock.now()).expect("join");
            let mut left = false;
            while !stop2.load(Ordering::SeqCst) {
                let now = clock.now();
                if leave2.load(Ordering::SeqCst)
                    && !left
                    && matches!(set.state(ls), Some(LockspaceState::Joined { .. }))
                {
                    left = set.leave(ls, now).is_ok();
                }
                set.step(now).expect("step");
                let snapshot = LockspaceSnapshot {
                    state: set.state(ls),
                    hosts: set.hosts(ls, now),
                };
                *snap2.lock().unwrap_or_else(|p| p.into_inner()) = snapshot;
                set.wait(now, now.saturating_add(Duration::from_millis(20)))
                    .expect("wait");
            }
        });
        LockspaceThread { snap, leave, stop }
    }

    /// The latest snapshot.
    pub fn snapshot(&self) -> LockspaceSnapshot {
        self.snap.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits (up to `limit`) until `ok` holds for a snapshot; panics with `what` otherwise.
    pub fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        ok: impl Fn(&LockspaceSnapshot) -> bool,
    ) -> LockspaceSnapshot {
        let end = Instant::now() + limit;
        loop {
            let s = self.snapshot();
            if ok(&s) {
                return s;
            }
            assert!(Instant::now() < end, "{what}: still {s:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Asks the thread to leave the lockspace (release its host id).
    pub fn leave(&self) {
        self.leave.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for LockspaceThread {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The LD_PRELOAD watchdog test bed (`watchdog/testbed/wdshim.c`), compiled once per test
/// process with gcc into the target directory. `None` (after printing why) when gcc is
/// missing and skipping is allowed.
pub fn wdshim_so() -> Option<PathBuf> {
    static SO: OnceLock<Option<PathBuf>> = OnceLock::new();
    SO.get_or_init(|| {
        gcc_cached(
            "watchdog/testbed/wdshim.c",
            "wdshim",
            ".so",
            &["-shared", "-fPIC"],
            &["-ldl"],
        )
    })
    .clone()
}

/// The lvmlockd-sequence program (`tests/fixtures/lvmlockd_seq.c`) built against Debian's
/// libsanlock-dev. `None` (after printing why) when gcc or the headers are missing and
/// skipping is allowed.
pub fn lvmlockd_seq_bin() -> Option<PathBuf> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| {
        if !prerequisite(
            Path::new("/usr/include/sanlock_resource.h").exists(),
            "libsanlock-dev (sanlock_resource.h) is needed to build the lvmlockd-sequence program",
        ) {
            return None;
        }
        gcc_cached(
            "tests/fixtures/lvmlockd_seq.c",
            "lvmlockd_seq",
            "",
            &[],
            &["-lsanlock"],
        )
    })
    .clone()
}

/// Builds `src` (relative to the workspace) with gcc into target/<profile>/<stem>/, named
/// after the source's hash: built under a per-process name and renamed into place, so that
/// parallel test binaries never race and rebuilt sources never pile up.
fn gcc_cached(src: &str, stem: &str, ext: &str, flags: &[&str], libs: &[&str]) -> Option<PathBuf> {
    if !prerequisite(on_path("gcc"), &format!("gcc is needed to build {src}")) {
        return None;
    }
    let src = workspace_root().join(src);
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .join(stem);
    std::fs::create_dir_all(&dir).expect("create the build dir");
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::fs::read(&src).expect("read the C source").hash(&mut h);
    let out = dir.join(format!("{stem}-{:016x}{ext}", h.finish()));
    if !out.exists() {
        let tmp = dir.join(format!("{stem}.{}.tmp", std::process::id()));
        run_ok(
            Command::new("gcc")
                .args(["-Wall", "-Wextra", "-Werror", "-O2"])
                .args(flags)
                .arg("-o")
                .arg(&tmp)
                .arg(&src)
                .args(libs),
        );
        std::fs::rename(&tmp, &out).expect("install the build");
    }
    Some(out)
}
