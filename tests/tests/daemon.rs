//! tenured end to end: real daemons, one loop device each over one shared backing file, each
//! host in its own process group with its own emulated watchdog (which kills that group when
//! starved), io_timeout 1. Clients are the real `tenure` CLI and raw sockets.
//!
//! Oracle: every lease holder holds `flock -n` on a file all hosts share for as long as it
//! holds the lease, so two holders alive at once show up as exit status 99 (a killed holder
//! drops its flock when it dies, so it leaves nothing stale behind).
//!
//! The supervisor signals the registered holder pid, not its children (as sanlock does): a
//! child that inherited the holder's resources outlives it. The oracle therefore lives in the
//! holder process itself (`flock -o`).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tenure_tests::{
    fuse_available, is_root, loop_devices_available, prerequisite, tenure_bin, tenured_bin,
    BackingFile, LoopDevice, StallFs,
};

const T: u64 = 1;
const W: u64 = 8;
const LS: &str = "DM";

fn can_run() -> bool {
    prerequisite(is_root(), "root") && prerequisite(loop_devices_available(), "loop devices")
}

fn kill_group(pgid: i32) {
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pgid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// One simulated host: tenured in its own process group, its emulated watchdog (own group,
/// kills the host's group when it fires), a loop device of its own.
struct Host {
    id: u64,
    dir: tempfile::TempDir,
    dev: LoopDevice,
    /// Leader of the host's process group (what the watchdog kills).
    leader: Child,
    tenured: Child,
    emulator: Child,
}

impl Host {
    fn start(id: u64, backing: &Path) -> Host {
        Self::start_with(id, backing, W)
    }

    /// A host whose watchdog fires `w` seconds after the last keepalive.
    fn start_with(id: u64, backing: &Path, w: u64) -> Host {
        Self::start_cfg(id, backing, w, "")
    }

    /// A host with `extra` appended to its tenured.toml (tables after the lockspace).
    fn start_cfg(id: u64, backing: &Path, w: u64, extra: &str) -> Host {
        let dev = LoopDevice::attach(backing, 512);
        let dir = tempfile::Builder::new()
            .prefix("tenured-host-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let d = dir.path();
        let cfg = format!(
            r#"host_name = "host-{id}"
io_timeout_s = {T}
run_dir = "{d}/run"
state_dir = "{d}/state"
socket = "{d}/tenured.sock"
[watchdog]
kind = "emulated"
emulated_socket = "{d}/wd.sock"
fire_timeout_s = {w}
other_hosts_fire_timeout_s = {w}
[supervision]
kill_grace_s = 2
sigkill_max = 3
[[lockspace]]
name = "{LS}"
host_id = {id}
path = "{dev}"
offset = 0
{extra}
"#,
            d = d.display(),
            dev = dev.path_str()
        );
        std::fs::write(d.join("tenured.toml"), cfg).unwrap();
        let leader = Command::new("sleep")
            .arg("3600")
            .process_group(0)
            .spawn()
            .unwrap();
        let emulator = Command::new(tenure_bin())
            .args(["watchdog", "emulate", "--socket"])
            .arg(d.join("wd.sock"))
            .args(["--kill-pgid", &leader.id().to_string(), "--record"])
            .arg(d.join("fired.log"))
            .arg("--clear-on-fire")
            .arg(d.join("run/watchdog-armed"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("emulator.log")).unwrap())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        while UnixStream::connect(d.join("wd.sock")).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "emulator did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let tenured = Command::new(tenured_bin())
            .env("TENURE_CAPTURE_DIR", tenure_tests::capture_dir())
            .arg("--config")
            .arg(d.join("tenured.toml"))
            .process_group(leader.id() as i32)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("tenured.log")).unwrap())
            .spawn()
            .unwrap();
        Host {
            id,
            dir,
            dev,
            leader,
            tenured,
            emulator,
        }
    }

    /// Starts tenured again with the same configuration, in the host's group (after the
    /// previous one was killed); its log goes on in tenured.log.
    fn restart_tenured(&mut self) {
        let _ = self.tenured.wait();
        let d = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(d.join("tenured.log"))
            .unwrap();
        self.tenured = Command::new(tenured_bin())
            .env("TENURE_CAPTURE_DIR", tenure_tests::capture_dir())
            .arg("--config")
            .arg(d.join("tenured.toml"))
            .process_group(self.pgid())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
    }

    /// Host `id` as this host's lockspace table shows it: (status, generation).
    fn sees(&self, id: u64) -> (String, u64) {
        let v = self.json(&["lockspace", "hosts", LS]);
        let e = v["hosts"]
            .as_array()
            .and_then(|a| a.iter().find(|e| e["host_id"] == id))
            .cloned()
            .unwrap_or_default();
        (
            e["status"].as_str().unwrap_or("").to_owned(),
            e["generation"].as_u64().unwrap_or(0),
        )
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("tenured.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tenured.log")).unwrap_or_default()
    }

    fn pgid(&self) -> i32 {
        self.leader.id() as i32
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
            "host {} tenure {args:?}: {}\n--- tenured log ---\n{}",
            self.id,
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn resource(&self, name: &str, mb: u64) -> String {
        format!("{LS}:{name}:{}:{}M", self.dev.path_str(), mb)
    }

    fn wait_joined(&self, within: Duration) {
        let t0 = Instant::now();
        loop {
            if self.socket().exists() {
                let out = self
                    .tenure(&["lockspace", "list", "--json"])
                    .output()
                    .unwrap();
                if out.status.success() {
                    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
                    if v["lockspaces"][0]["state"] == "joined" {
                        return;
                    }
                }
            }
            assert!(
                t0.elapsed() < within,
                "host {} did not join within {within:?}\n{}",
                self.id,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // The emulator first (so it cannot fire at the test bed), then the host's group.
        let _ = self.emulator.kill();
        let _ = self.emulator.wait();
        kill_group(self.pgid());
        let _ = self.tenured.wait();
        let _ = self.leader.wait();
    }
}

fn format_area(dev: &str, resources: &[(&str, u64)]) {
    let t = tenure_bin();
    let ok = |args: &[&str]| {
        let out = Command::new(&t).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // Free slots record our io_timeout: the join waits 2T of the slot's recorded T.
    ok(&[
        "lockspace",
        "init",
        &format!("{LS}:0:{dev}:0"),
        "--io-timeout",
        "1",
    ]);
    for (r, mb) in resources {
        ok(&[
            "resource",
            "init",
            &format!("{LS}:{r}:{dev}:{mb}M"),
            "--num-hosts",
            "8",
        ]);
    }
}

/// `flock -o` holds the lock in the flock process itself (the registered holder), not in its
/// `sleep` child: killing the holder frees the oracle even though the child lives on.
fn oracle_cmd(oracle: &Path, hold: &str) -> String {
    format!(
        "exec flock -n -o -E 99 {o} sleep {hold}",
        o = oracle.display()
    )
}

/// Runs `tenure run --lease` for `res` until it succeeded `want` times or `within` passes;
/// returns (successes, refusals). Any overlap (exit 99) fails the test.
fn contend(host: &Host, res: &str, oracle: &Path, want: u32, within: Duration) -> (u32, u32) {
    let (mut ok, mut refused) = (0, 0);
    let t0 = Instant::now();
    while ok < want && t0.elapsed() < within {
        let out: Output = host
            .tenure(&[
                "run",
                "--lease",
                res,
                "--",
                "sh",
                "-c",
                &oracle_cmd(oracle, "0.2"),
            ])
            .output()
            .unwrap();
        match out.status.code() {
            Some(0) => ok += 1,
            Some(99) => panic!("host {}: two holders at once (oracle)", host.id),
            _ => {
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(
                    err.contains("OwnerAlive") || err.contains("OwnedRetry"),
                    "host {} unexpected failure: {err}",
                    host.id
                );
                refused += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    (ok, refused)
}

#[test]
fn three_hosts_hand_leases_over_and_run_protects_the_command() {
    if !can_run() {
        return;
    }
    let backing = BackingFile::new(16 << 20);
    let base = LoopDevice::attach(backing.path(), 512);
    format_area(&base.path_str(), &[("R", 1), ("S", 2)]);
    let hosts: Vec<Host> = (1..=3).map(|id| Host::start(id, backing.path())).collect();
    for h in &hosts {
        h.wait_joined(Duration::from_secs(30));
    }
    // Every host sees the others live.
    std::thread::sleep(Duration::from_secs(3 * T));
    let v = hosts[0].json(&["lockspace", "hosts", LS]);
    let live = v["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["status"] == "live")
        .count();
    assert_eq!(live, 3, "{v}");

    // A lease held by `run` shows in status with its holder pid; another host is refused.
    let oracle_dir = tempfile::tempdir().unwrap();
    let oracle = oracle_dir.path().join("held");
    let mut holder = hosts[0]
        .tenure(&[
            "run",
            "--lease",
            &hosts[0].resource("R", 1),
            "--",
            "sh",
            "-c",
            &oracle_cmd(&oracle, "3"),
        ])
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let st = loop {
        let st = hosts[0].json(&["status"]);
        if st["leases"].as_array().is_some_and(|l| !l.is_empty()) {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "lease never showed: {st}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(st["leases"][0]["pid"], holder.id() as i64, "{st}");
    assert_eq!(
        st["supervisor"]["spaces"][0]["holders"][0],
        holder.id() as i64
    );
    let out = hosts[1]
        .tenure(&["run", "--lease", &hosts[1].resource("R", 1), "--", "true"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("host id 1") && err.contains("OwnerAlive"),
        "{err}"
    );
    // Exit code of the command; the connection closing released the lease.
    let rc = holder.wait().unwrap();
    assert!(rc.success(), "holder: {rc:?}");
    let out = hosts[1]
        .tenure(&[
            "run",
            "--lease",
            &hosts[1].resource("R", 1),
            "--",
            "sh",
            "-c",
            "exit 7",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // All three contend for S; each gets it several times, never two at once.
    let results: Vec<(u32, u32)> = std::thread::scope(|s| {
        let hs: Vec<_> = hosts
            .iter()
            .map(|h| {
                let res = h.resource("S", 2);
                let oracle = &oracle;
                s.spawn(move || contend(h, &res, oracle, 3, Duration::from_secs(60)))
            })
            .collect();
        hs.into_iter().map(|j| j.join().unwrap()).collect()
    });
    for (h, (ok, refused)) in hosts.iter().zip(&results) {
        assert_eq!(
            *ok, 3,
            "host {} got S {ok} times ({refused} refusals)",
            h.id
        );
    }
    let refusals: u32 = results.iter().map(|r| r.1).sum();
    assert!(refusals > 0, "contention never happened: {results:?}");
    eprintln!("contention: (successes, refusals) per host {results:?}");

    // Acquire for another pid (root), inquire with the state string, release.
    let mut sleeper = Command::new("sleep").arg("60").spawn().unwrap();
    let pid = sleeper.id().to_string();
    let v = hosts[2].json(&[
        "resource",
        "acquire",
        "-p",
        &pid,
        &hosts[2].resource("R", 1),
    ]);
    let lver = v["leases"][0]["lver"].as_u64().unwrap();
    let inq = hosts[2].json(&["resource", "inquire", "-p", &pid]);
    let state = inq["state"].as_str().unwrap();
    assert!(
        state.ends_with(&format!(":1048576:{lver}")) && state.starts_with("DM:R:"),
        "{state}"
    );
    // Owners through the daemon, with liveness from host 1's table: host 3 holds R, live.
    let mut q = frame(r#"{"op":"hello","version":1}"#);
    q.extend(frame(&format!(
        r#"{{"op":"owners","resource":"{}"}}"#,
        hosts[2].resource("R", 1)
    )));
    let out = raw(&hosts[0].socket(), &q, 2);
    let n = u32::from_le_bytes(out[..4].try_into().unwrap()) as usize;
    let owners = first_reply(&out[4 + n..]);
    let ex = &owners["ok"]["disks"][0]["exclusive"];
    assert_eq!(
        (ex["host_id"].as_u64(), ex["status"].as_str()),
        (Some(3), Some("live")),
        "{owners}"
    );
    // Exclusive → shared: then host 1 may hold it shared too, but not exclusively.
    hosts[2].json(&["resource", "convert", "-p", &pid, "DM:R"]);
    let inq = hosts[2].json(&["resource", "inquire", "-p", &pid]);
    assert_eq!(inq["leases"][0]["shared"], true, "{inq}");
    let out = hosts[0]
        .tenure(&[
            "run",
            "--no-wait",
            "--lease",
            &hosts[0].resource("R", 1),
            "--",
            "true",
        ])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("SharedBusy"), "{e}");
    let out = hosts[0]
        .tenure(&[
            "run",
            "--lease",
            &format!("{}:SH", hosts[0].resource("R", 1)),
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Shared → exclusive: refused while host 1 holds it shared too (still shared after),
    // done once host 1 released; then host 1 cannot hold it shared.
    let mut sh1 = spawn_holder(
        &hosts[0],
        &format!("{}:SH", hosts[0].resource("R", 1)),
        "exec sleep 600",
    );
    wait_lease_shown(&hosts[0], 1);
    let out = hosts[2]
        .tenure(&["resource", "convert", "--exclusive", "-p", &pid, "DM:R"])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("SharedBusy"), "{e}");
    let inq = hosts[2].json(&["resource", "inquire", "-p", &pid]);
    assert_eq!(inq["leases"][0]["shared"], true, "still shared: {inq}");
    let _ = sh1.kill();
    let _ = sh1.wait();
    let t0 = Instant::now();
    while !hosts[0].json(&["status"])["leases"]
        .as_array()
        .is_some_and(|a| a.is_empty())
    {
        assert!(t0.elapsed() < Duration::from_secs(10), "host 1 released");
        std::thread::sleep(Duration::from_millis(100));
    }
    let v = hosts[2].json(&["resource", "convert", "--exclusive", "-p", &pid, "DM:R"]);
    assert_eq!(v["shared"], false, "{v}");
    let inq = hosts[2].json(&["resource", "inquire", "-p", &pid]);
    assert_eq!(inq["leases"][0]["shared"], false, "{inq}");
    let out = hosts[0]
        .tenure(&[
            "run",
            "--no-wait",
            "--lease",
            &format!("{}:SH", hosts[0].resource("R", 1)),
            "--",
            "true",
        ])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("OwnerAlive"), "{e}");
    hosts[2].json(&["resource", "release", "-p", &pid, "DM:R"]);
    hosts[2].json(&[
        "resource",
        "acquire",
        "-p",
        &pid,
        &hosts[2].resource("R", 1),
    ]);
    // An LVB set while holding is written at release and read by the next holder.
    hosts[2].json(&["lvb", "set", "-p", &pid, "DM:R", "c0ffee"]);
    hosts[2].json(&["resource", "release", "-p", &pid, "DM:R"]);
    let v = hosts[2].json(&[
        "resource",
        "acquire",
        "-p",
        &pid,
        "--lvb",
        &hosts[2].resource("R", 1),
    ]);
    assert!(
        v["leases"][0]["lvb_hex"]
            .as_str()
            .unwrap()
            .starts_with("c0ffee00"),
        "{v}"
    );
    let g = hosts[2].json(&["lvb", "get", "-p", &pid, "DM:R"]);
    assert!(g["lvb_hex"].as_str().unwrap().starts_with("c0ffee"), "{g}");
    // The pid exiting releases it: host 1 can take R afterwards.
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let t0 = Instant::now();
    loop {
        let out = hosts[0]
            .tenure(&["run", "--lease", &hosts[0].resource("R", 1), "--", "true"])
            .output()
            .unwrap();
        if out.status.success() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "R not released after its pid exited: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Clean leave and exit on SIGTERM with nothing held; the watchdog is disarmed (no fire).
    // A `run` that just exited is released asynchronously: wait until nothing is held, since
    // tenured refuses SIGTERM while a lease is.
    for h in &hosts {
        let t0 = Instant::now();
        while h.json(&["status"])["leases"]
            .as_array()
            .is_some_and(|l| !l.is_empty())
        {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "host {} still holds",
                h.id
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    for h in &hosts {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(h.tenured.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
    }
    for mut h in hosts {
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = h.tenured.try_wait().unwrap() {
                break s;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(15),
                "host {} did not exit: {}",
                h.id,
                h.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(status.success(), "host {}: {status:?}\n{}", h.id, h.log());
        assert!(h.log().contains("watchdog disarmed"), "{}", h.log());
        assert!(!h.dir.path().join("fired.log").exists());
    }
}

#[test]
fn killed_daemon_is_fenced_and_its_lease_taken_only_after_host_dead_time() {
    if !can_run() {
        return;
    }
    let backing = BackingFile::new(16 << 20);
    let base = LoopDevice::attach(backing.path(), 512);
    format_area(&base.path_str(), &[("R", 1)]);
    let h1 = Host::start(1, backing.path());
    let h2 = Host::start(2, backing.path());
    h1.wait_joined(Duration::from_secs(30));
    h2.wait_joined(Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(3 * T));
    // A holder inside host 1's process group (what the watchdog resets), holding the oracle.
    let oracle_dir = tempfile::tempdir().unwrap();
    let oracle = oracle_dir.path().join("held");
    let mut holder = spawn_holder(&h1, &h1.resource("R", 1), &oracle_cmd(&oracle, "600"));
    let t0 = Instant::now();
    while h1.json(&["status"])["leases"]
        .as_array()
        .is_none_or(|l| l.is_empty())
    {
        assert!(t0.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(100));
    }
    // SIGKILL tenured only: nobody feeds the watchdog any more.
    let killed_at = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(h1.tenured.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // Host 2 tries without waiting for the owner; it succeeds only once host 1 is dead.
    let mut refusals = Vec::new();
    let took_at = loop {
        let out = h2
            .tenure(&[
                "run",
                "--no-wait",
                "--lease",
                &h2.resource("R", 1),
                "--",
                "sh",
                "-c",
                &oracle_cmd(&oracle, "0.1"),
            ])
            .output()
            .unwrap();
        assert_ne!(
            out.status.code(),
            Some(99),
            "host 1's holder still held the oracle"
        );
        if out.status.success() {
            break Instant::now();
        }
        refusals.push(String::from_utf8_lossy(&out.stderr).into_owned());
        assert!(
            killed_at.elapsed() < Duration::from_secs(60),
            "never taken over: {:?}\n{}",
            refusals.last(),
            h2.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let after = took_at.duration_since(killed_at);
    // Host dead = 8T + W after its last renewal, which was at most one renewal interval (2T)
    // before the kill.
    let min = Duration::from_secs(8 * T + W - 2 * T);
    assert!(
        after >= min,
        "taken over {after:?} after the kill (< {min:?})"
    );
    assert!(
        refusals.iter().any(|r| r.contains("OwnedRetry")),
        "the owner should have been 'not dead yet' for a while: {refusals:?}"
    );
    // The watchdog fired and killed the holder.
    let rec = std::fs::read_to_string(h1.dir.path().join("fired.log")).unwrap_or_default();
    assert!(!rec.is_empty(), "emulated watchdog did not fire");
    let status = holder.wait().unwrap();
    assert!(
        status.code().is_none(),
        "holder should have been killed: {status:?}"
    );
    eprintln!("taken over {after:?} after SIGKILL of tenured (minimum {min:?})");
}

/// Sends `bytes` and reads until `replies` whole frames arrived, the daemon closed, or 10 s
/// passed (the connection stays open meanwhile: closing it is a client leaving).
fn raw(socket: &Path, bytes: &[u8], replies: usize) -> Vec<u8> {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let whole = |out: &[u8]| {
        let (mut at, mut n) = (0, 0);
        while at + 4 <= out.len() {
            let len = u32::from_le_bytes(out[at..at + 4].try_into().unwrap()) as usize;
            if at + 4 + len > out.len() {
                break;
            }
            at += 4 + len;
            n += 1;
        }
        n
    };
    while whole(&out) < replies {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    out
}

fn frame(json: &str) -> Vec<u8> {
    let mut v = (json.len() as u32).to_le_bytes().to_vec();
    v.extend_from_slice(json.as_bytes());
    v
}

fn first_reply(bytes: &[u8]) -> Value {
    assert!(bytes.len() >= 4, "no reply");
    let n = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
    serde_json::from_slice(&bytes[4..4 + n]).unwrap()
}

#[test]
fn bad_clients_get_errors_and_the_daemon_is_unaffected() {
    if !can_run() {
        return;
    }
    let backing = BackingFile::new(16 << 20);
    let base = LoopDevice::attach(backing.path(), 512);
    format_area(&base.path_str(), &[("R", 1)]);
    let h = Host::start(1, backing.path());
    h.wait_joined(Duration::from_secs(30));
    // A good client holds a lease throughout.
    let mut holder = h
        .tenure(&["run", "--lease", &h.resource("R", 1), "--", "sleep", "60"])
        .spawn()
        .unwrap();
    wait_lease_shown(&h, 1);
    let sock = h.socket();
    // Garbage: a length prefix far above the limit.
    let r = first_reply(&raw(&sock, b"\xff\xff\xff\x7fgarbage", 1));
    assert_eq!(r["error"]["code"], "bad_request", "{r}");
    // A request before hello.
    let r = first_reply(&raw(&sock, &frame(r#"{"op":"status"}"#), 1));
    assert_eq!(r["error"]["code"], "version", "{r}");
    // Wrong protocol version.
    let r = first_reply(&raw(&sock, &frame(r#"{"op":"hello","version":99}"#), 1));
    assert_eq!(r["error"]["code"], "version", "{r}");
    // Malformed JSON, unknown op, unknown field after a good hello: errors, connection usable.
    let mut msgs = frame(r#"{"op":"hello","version":1}"#);
    msgs.extend(frame("{not json"));
    msgs.extend(frame(r#"{"op":"format_everything"}"#));
    msgs.extend(frame(r#"{"op":"status","verbose":true}"#));
    msgs.extend(frame(
        r#"{"op":"acquire","resources":["DM:R:/nonexistent:1M"],"pid":1}"#,
    ));
    msgs.extend(frame(r#"{"op":"status"}"#));
    let out = raw(&sock, &msgs, 6);
    let mut replies = Vec::new();
    let mut at = 0;
    while at + 4 <= out.len() {
        let n = u32::from_le_bytes(out[at..at + 4].try_into().unwrap()) as usize;
        replies.push(serde_json::from_slice::<Value>(&out[at + 4..at + 4 + n]).unwrap());
        at += 4 + n;
    }
    assert_eq!(replies.len(), 6, "{replies:?}");
    assert!(replies[0]["ok"].is_object());
    for r in &replies[1..4] {
        assert_eq!(r["error"]["code"], "bad_request", "{r}");
    }
    // Root may act for pid 1, but the device does not exist: an I/O error, not a crash.
    assert!(replies[4]["error"].is_object(), "{}", replies[4]);
    assert!(replies[5]["ok"]["leases"].is_array(), "{}", replies[5]);
    // A client that restricted itself gets no further request served.
    let mut msgs = frame(r#"{"op":"hello","version":1}"#);
    msgs.extend(frame(r#"{"op":"restrict","all":true}"#));
    msgs.extend(frame(r#"{"op":"status"}"#));
    let out = raw(&sock, &msgs, 3);
    let n0 = u32::from_le_bytes(out[..4].try_into().unwrap()) as usize;
    let n1 = u32::from_le_bytes(out[4 + n0..8 + n0].try_into().unwrap()) as usize;
    let third = first_reply(&out[8 + n0 + n1..]);
    assert_eq!(third["error"]["code"], "permission", "{third}");
    // Half a message, then the client vanishes.
    let mut half = frame(r#"{"op":"hello","version":1}"#);
    half.truncate(10);
    raw(&sock, &half, 0);
    // Huge length with the connection held open: the daemon answers and closes.
    let r = first_reply(&raw(&sock, &(1u32 << 30).to_le_bytes(), 1));
    assert_eq!(r["error"]["code"], "bad_request");
    // Another uid cannot even connect (socket mode 0600, root's).
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(tenure_bin())
        .arg("--socket")
        .arg(&sock)
        .arg("status")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The daemon is unaffected: the lease is still held, status works.
    let st = h.json(&["status"]);
    assert_eq!(st["leases"].as_array().unwrap().len(), 1, "{st}");
    assert_eq!(st["lockspaces"][0]["state"], "joined");
    let _ = holder.kill();
    let _ = holder.wait();
}

#[test]
fn embedded_default_starts_serves_and_stops_cleanly() {
    if !prerequisite(is_root(), "root") {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("tenured-embedded-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let data = dir.path().join("data");
    let mut d = Command::new(tenured_bin())
        .arg("--data-dir")
        .arg(&data)
        .current_dir(dir.path())
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
    struct Kill(i32);
    impl Drop for Kill {
        fn drop(&mut self) {
            kill_group(self.0);
        }
    }
    let _guard = Kill(d.id() as i32);
    let sock = data.join("tenured.sock");
    let t = || {
        let mut c = Command::new(tenure_bin());
        c.arg("--socket").arg(&sock).current_dir(dir.path());
        c
    };
    let t0 = Instant::now();
    loop {
        let out = t().args(["lockspace", "list", "--json"]).output().unwrap();
        if out.status.success() {
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            if v["lockspaces"][0]["state"] == "joined" {
                break;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "embedded default did not join:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(log().contains("embedded default"), "{}", log());
    // The tour: run a command under a lease of the formatted file, with a relative path.
    let out = t()
        .args([
            "run",
            "--lease",
            "tenure:r0:data/leases.img:1M",
            "--",
            "sh",
            "-c",
            "exit 7",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = t().args(["status"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("armed") && text.contains("joined (generation 1)"),
        "{text}"
    );
    // The run's lease is released asynchronously after it exited; SIGTERM is refused while a
    // lease is held.
    let t0 = Instant::now();
    loop {
        let out = t().args(["status", "--json"]).output().unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        if v["leases"].as_array().is_some_and(|l| l.is_empty()) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{v}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SIGTERM: leave, disarm, stop the emulator, exit 0.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = d.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "did not stop:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status:?}\n{}", log());
    let t0 = Instant::now();
    while UnixStream::connect(data.join("watchdog.sock")).is_ok() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "emulator still running"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `tenure run --no-wait --lease RES -- sh -c SCRIPT` on `h` until it succeeds, within
/// `within`; exit status 99 (the oracle's overlap) fails the test at once.
fn take_over(h: &Host, res: &str, script: &str, within: Duration) {
    let t0 = Instant::now();
    loop {
        let out = h
            .tenure(&["run", "--no-wait", "--lease", res, "--", "sh", "-c", script])
            .output()
            .unwrap();
        assert_ne!(
            out.status.code(),
            Some(99),
            "host {}: two holders at once (oracle)",
            h.id
        );
        if out.status.success() {
            return;
        }
        assert!(
            t0.elapsed() < within,
            "host {} never got {res}: {}",
            h.id,
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits for a child to end; its raw wait status.
fn wait_end(c: &mut Child, within: Duration, what: &str) -> std::process::ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(s) = c.try_wait().unwrap() {
            return s;
        }
        assert!(
            t0.elapsed() < within,
            "{what} still running after {within:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_lease_shown(h: &Host, n: usize) {
    let t0 = Instant::now();
    while h.json(&["status"])["leases"].as_array().map_or(0, Vec::len) < n {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "leases never showed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A holder in host `h`'s process group running `sh -c script` under a lease.
fn spawn_holder(h: &Host, res: &str, script: &str) -> Child {
    h.tenure(&["run", "--lease", res, "--", "sh", "-c", script])
        .process_group(h.pgid())
        .spawn()
        .unwrap()
}

#[test]
fn stalled_storage_kills_holders_after_8t_without_resetting_the_host() {
    if !can_run() || !fuse_available() {
        return;
    }
    use std::os::unix::process::ExitStatusExt;
    let fs = StallFs::start(16 << 20);
    let base = LoopDevice::attach(&fs.backing(), 512);
    format_area(&base.path_str(), &[("R", 1), ("S", 2)]);
    let h1 = Host::start(1, &fs.lun());
    let h2 = Host::start(2, &fs.backing());
    h1.wait_joined(Duration::from_secs(30));
    h2.wait_joined(Duration::from_secs(30));
    // One holder that dies on SIGTERM, one that ignores it.
    let oracle_dir = tempfile::tempdir().unwrap();
    let oracle = oracle_dir.path().join("held");
    let mut polite = spawn_holder(&h1, &h1.resource("R", 1), &oracle_cmd(&oracle, "600"));
    let mut stubborn = spawn_holder(&h1, &h1.resource("S", 2), "trap '' TERM; exec sleep 600");
    wait_lease_shown(&h1, 2);
    let stalled_at = Instant::now();
    fs.hang_reads(true);
    fs.hang_writes(true);
    let s = wait_end(&mut polite, Duration::from_secs(30), "polite holder");
    let polite_after = stalled_at.elapsed();
    assert_eq!(s.signal(), Some(libc::SIGTERM), "{s:?}");
    let s = wait_end(&mut stubborn, Duration::from_secs(30), "stubborn holder");
    let stubborn_after = stalled_at.elapsed();
    assert_eq!(s.signal(), Some(libc::SIGKILL), "{s:?}");
    // Not before 8T after the last good renewal (at most 2T before the stall).
    assert!(
        polite_after >= Duration::from_secs(6 * T),
        "killed after {polite_after:?}"
    );
    assert!(
        stubborn_after >= polite_after + Duration::from_secs(1),
        "{stubborn_after:?}"
    );
    // The host is not reset: the daemon still serves, the watchdog never fires.
    std::thread::sleep(Duration::from_secs(W + 2));
    assert!(h1.tenured.id() > 0);
    let st = h1.json(&["status"]);
    assert!(st["leases"].as_array().unwrap().is_empty(), "{st}");
    assert!(
        !h1.dir.path().join("fired.log").exists(),
        "watchdog fired although every holder died:\n{}",
        h1.log()
    );
    assert!(h1.log().contains("all holders dead"), "{}", h1.log());
    // Its fence record tells why.
    let why = h1
        .tenure(&["why-reset", "--state-dir"])
        .arg(h1.dir.path().join("state"))
        .output()
        .unwrap();
    let why = String::from_utf8_lossy(&why.stdout);
    assert!(
        why.contains("lockspace DM") && why.contains("renewals of lockspace DM failed"),
        "{why}"
    );
    // Host 2 takes R once host 1 is dead to it, and finds the oracle free.
    take_over(
        &h2,
        &h2.resource("R", 1),
        &oracle_cmd(&oracle, "0.1"),
        Duration::from_secs(40),
    );
    eprintln!(
        "stall: SIGTERM holder dead after {polite_after:?}, SIGTERM-ignoring holder SIGKILLed after {stubborn_after:?}; R taken by host 2 {:?} after the stall",
        stalled_at.elapsed()
    );
    fs.hang_reads(false);
    fs.hang_writes(false);
    // Storage answers again: the configured lockspace is joined again by itself, in a new
    // generation (issue 20, automatic rejoin), after the failed attempts of the stall.
    let back = Instant::now();
    let generation = loop {
        let v = h1.json(&["lockspace", "list"]);
        if v["lockspaces"][0]["state"] == "joined" {
            break v["lockspaces"][0]["detail"]["generation"]
                .as_u64()
                .unwrap_or(0);
        }
        assert!(
            back.elapsed() < Duration::from_secs(90),
            "not joined again: {v}\n{}",
            h1.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(generation >= 2, "a new join: generation {generation}");
    let log = h1.log();
    assert!(log.contains("rejoining configured lockspace"), "{log}");
    let t0 = Instant::now();
    while !h1.json(&["status"])["rejoins"]
        .as_array()
        .is_some_and(Vec::is_empty)
    {
        assert!(t0.elapsed() < Duration::from_secs(10), "rejoin not ended");
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "joined again {:?} after storage came back (generation {generation})",
        back.elapsed()
    );
}

/// A cgroup v1 freezer group, thawed and removed on drop.
struct Frozen(PathBuf);

impl Frozen {
    fn new() -> Option<Frozen> {
        let root = Path::new("/sys/fs/cgroup/freezer");
        if !root.join("cgroup.procs").exists() {
            return None;
        }
        let p = root.join(format!("tenure-test-{}", std::process::id()));
        std::fs::create_dir_all(&p).ok()?;
        Some(Frozen(p))
    }

    fn freeze(&self, pid: u32) {
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string()).unwrap();
        std::fs::write(self.0.join("freezer.state"), "FROZEN").unwrap();
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("freezer.state"), "THAWED");
        if let Ok(pids) = std::fs::read_to_string(self.0.join("cgroup.procs")) {
            for p in pids.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let t0 = Instant::now();
        while std::fs::remove_dir(&self.0).is_err() && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn a_holder_that_cannot_be_killed_lets_the_watchdog_fire() {
    if !can_run() || !fuse_available() {
        return;
    }
    let Some(frozen) = Frozen::new() else {
        prerequisite(false, "cgroup v1 freezer at /sys/fs/cgroup/freezer");
        return;
    };
    let fs = StallFs::start(16 << 20);
    let base = LoopDevice::attach(&fs.backing(), 512);
    format_area(&base.path_str(), &[("R", 1)]);
    let h1 = Host::start(1, &fs.lun());
    h1.wait_joined(Duration::from_secs(30));
    let mut stuck = spawn_holder(&h1, &h1.resource("R", 1), "exec sleep 600");
    wait_lease_shown(&h1, 1);
    // Frozen: SIGTERM and SIGKILL stay pending, the holder never dies.
    frozen.freeze(stuck.id());
    fs.hang_reads(true);
    fs.hang_writes(true);
    let t0 = Instant::now();
    let fired = h1.dir.path().join("fired.log");
    while !fired.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(8 * T + W + 15),
            "watchdog never fired:\n{}",
            h1.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let fired_after = t0.elapsed();
    // Fired no earlier than the renewal deadline plus most of W.
    assert!(
        fired_after >= Duration::from_secs(6 * T + W - 2),
        "{fired_after:?}"
    );
    let log = h1.log();
    assert!(log.contains("holders survive SIGKILL"), "{log}");
    let rec = std::fs::read_to_string(h1.dir.path().join("state/fence.log")).unwrap();
    assert!(
        rec.contains(&format!("{}", stuck.id())),
        "fence record names the holder: {rec}"
    );
    drop(frozen);
    let _ = stuck.wait();
    fs.hang_reads(false);
    fs.hang_writes(false);
    eprintln!("unkillable holder: watchdog fired {fired_after:?} after the stall");
}

/// The resource index through the native CLI (`tenure rindex`): format, create under the
/// private lease, lookup by name / next free slot, delete, add / remove, rebuild; errors for
/// an unknown name and a bad offset. Then a lockspace joined with its own io_timeout.
#[test]
fn rindex_and_a_per_lockspace_io_timeout_through_the_native_cli() {
    if !can_run() {
        return;
    }
    let backing = BackingFile::new(16 << 20);
    let base = LoopDevice::attach(backing.path(), 512);
    format_area(&base.path_str(), &[]);
    let h1 = Host::start(1, backing.path());
    h1.wait_joined(Duration::from_secs(30));
    let x = format!("{LS}:{}:4M", h1.dev.path_str());
    let rx = |args: &[&str]| -> Value {
        let mut all = vec!["rindex"];
        all.extend_from_slice(&args[..1]);
        all.push(&x);
        all.extend_from_slice(&args[1..]);
        h1.json(&all)
    };
    rx(&["format"]);
    assert_eq!(rx(&["create", "--name", "vm1"])["offset"], 6 << 20);
    assert_eq!(
        rx(&["create", "--name", "vm2", "--num-hosts", "4"])["offset"],
        7 << 20
    );
    assert_eq!(rx(&["lookup", "--name", "vm2"])["offset"], 7 << 20);
    assert_eq!(rx(&["lookup"])["offset"], 8 << 20, "next free slot");
    assert_eq!(rx(&["delete", "--name", "vm1"])["offset"], 6 << 20);
    assert_eq!(
        rx(&["lookup"])["offset"],
        6 << 20,
        "the deleted slot is free again"
    );
    let fails = |args: &[&str], what: &str| {
        let mut all = vec!["rindex", args[0], &x];
        all.extend_from_slice(&args[1..]);
        let out = h1.tenure(&all).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(what), "{args:?}: {err}");
    };
    fails(&["lookup", "--name", "vm1"], "no resource");
    fails(
        &["add", "--name", "x", "--offset", "123"],
        "not a resource lease slot",
    );
    rx(&["remove", "--offset", &(7u64 << 20).to_string()]);
    fails(&["lookup", "--name", "vm2"], "no resource");
    assert_eq!(
        rx(&["rebuild"])["entries"],
        1,
        "vm2's lease is still on disk"
    );
    assert_eq!(rx(&["lookup", "--name", "vm2"])["offset"], 7 << 20);
    // A lockspace joined with its own io_timeout (sanlock's ADD_LOCKSPACE io_timeout).
    let out = Command::new(tenure_bin())
        .args([
            "lockspace",
            "init",
            &format!("LS2:0:{}:12M", h1.dev.path_str()),
            "--io-timeout",
            "1",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let ls2 = format!("LS2:1:{}:12M", h1.dev.path_str());
    let out = h1
        .tenure(&["lockspace", "join", &ls2, "--io-timeout", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "io_timeout 0 is refused");
    h1.json(&["lockspace", "join", &ls2, "--io-timeout", "3"]);
    let list = h1.json(&["lockspace", "list"]);
    let t: Vec<(String, u64)> = list["lockspaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["name"].as_str().unwrap().to_owned(),
                l["io_timeout_s"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(
        t.contains(&("LS2".to_owned(), 3)) && t.contains(&(LS.to_owned(), T)),
        "{t:?}"
    );
    // The created lease is a real one: acquire it through the daemon.
    let v = h1.json(&[
        "resource",
        "acquire",
        "-p",
        &std::process::id().to_string(),
        &format!("{LS}:vm2:{}:7M", h1.dev.path_str()),
    ]);
    assert!(v.to_string().contains("vm2"), "{v}");
}

/// A lockspace marked used (`tenure lockspace config --used true`, sanlock's SET_CONFIG) can
/// neither be left nor cleared after a loss: with no lease holder at all, a storage hang lets
/// the watchdog fire. Before that: leaving is refused until it is unmarked.
#[test]
fn a_lockspace_marked_used_lets_the_watchdog_fire_when_lost() {
    if !can_run() || !fuse_available() {
        return;
    }
    let fs = StallFs::start(16 << 20);
    let base = LoopDevice::attach(&fs.backing(), 512);
    format_area(&base.path_str(), &[("R", 1)]);
    let h1 = Host::start(1, &fs.lun());
    h1.wait_joined(Duration::from_secs(30));
    let v = h1.json(&["lockspace", "config", "DM", "--used", "true"]);
    assert_eq!(v["used"], true, "{v}");
    let out = h1.tenure(&["lockspace", "leave", "DM"]).output().unwrap();
    assert!(!out.status.success(), "leaving a used lockspace is refused");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("marked used"),
        "{out:?}"
    );
    let v = h1.json(&["lockspace", "config", "DM", "--used", "false"]);
    assert_eq!(v["used"], false, "{v}");
    let v = h1.json(&["lockspace", "config", "DM", "--used", "true"]);
    assert_eq!(v["used"], true, "{v}");
    let out = h1
        .tenure(&["lockspace", "config", "NOPE", "--used", "true"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "unknown lockspace refused");
    fs.hang_reads(true);
    fs.hang_writes(true);
    let t0 = Instant::now();
    let fired = h1.dir.path().join("fired.log");
    while !fired.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(8 * T + W + 15),
            "watchdog never fired:\n{}",
            h1.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let fired_after = t0.elapsed();
    assert!(
        fired_after >= Duration::from_secs(6 * T + W - 2),
        "{fired_after:?}"
    );
    let log = h1.log();
    assert!(log.contains("lost while marked used"), "{log}");
    fs.hang_reads(false);
    fs.hang_writes(false);
    eprintln!("used lockspace without holders: watchdog fired {fired_after:?} after the stall");
}

#[test]
fn a_paused_daemon_does_not_resume_holding_what_another_host_may_take() {
    if !can_run() {
        return;
    }
    let backing = BackingFile::new(16 << 20);
    let base = LoopDevice::attach(backing.path(), 512);
    format_area(&base.path_str(), &[("R", 1)]);
    // W longer than the pause: the daemon resumes before its watchdog would fire.
    const W_LONG: u64 = 14;
    let h1 = Host::start_with(1, backing.path(), W_LONG);
    let h2 = Host::start_with(2, backing.path(), W_LONG);
    h1.wait_joined(Duration::from_secs(30));
    h2.wait_joined(Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(3 * T));
    let oracle_dir = tempfile::tempdir().unwrap();
    let oracle = oracle_dir.path().join("held");
    let mut h = spawn_holder(&h1, &h1.resource("R", 1), &oracle_cmd(&oracle, "600"));
    wait_lease_shown(&h1, 1);
    // Pause tenured (reactor and supervisor) past the renewal fail time, then resume.
    let pid = nix::unistd::Pid::from_raw(h1.tenured.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    std::thread::sleep(Duration::from_secs(8 * T + 2));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    // It resumes, finds its renewal deadline passed, kills the holder at once and holds
    // nothing any more; the holder dying in time spares the host.
    let s = wait_end(&mut h, Duration::from_secs(5), "holder of a resumed host");
    assert!(!s.success(), "{s:?}");
    // The supervisor notices the death within a poll (100 ms) and clears the lockspace.
    let t0 = Instant::now();
    let st = loop {
        let st = h1.json(&["status"]);
        if st["leases"].as_array().unwrap().is_empty() {
            break st;
        }
        assert!(t0.elapsed() < Duration::from_secs(3), "{st}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_ne!(st["lockspaces"][0]["state"], "joined", "{st}");
    std::thread::sleep(Duration::from_secs(3));
    let fired = h1.dir.path().join("fired.log").exists();
    assert!(
        !fired,
        "reset although its holder died in time:\n{}",
        h1.log()
    );
    // Host 2 takes R (after host-dead time) and the oracle is free: no overlap.
    let t0 = Instant::now();
    take_over(
        &h2,
        &h2.resource("R", 1),
        &oracle_cmd(&oracle, "0.1"),
        Duration::from_secs(40),
    );
    eprintln!(
        "pause: host 1 resumed after {}s, lost the lockspace and killed its holder; host 2 took R {:?} after the resume",
        8 * T + 2,
        t0.elapsed()
    );
}

#[test]
fn a_request_from_another_host_makes_the_holder_give_the_lease_up() {
    if !can_run() {
        return;
    }
    use std::os::unix::process::ExitStatusExt;
    let backing = BackingFile::new(16 << 20);
    let base = LoopDevice::attach(backing.path(), 512);
    format_area(&base.path_str(), &[("R", 1), ("S", 2)]);
    let h1 = Host::start(1, backing.path());
    let h2 = Host::start(2, backing.path());
    h1.wait_joined(Duration::from_secs(30));
    h2.wait_joined(Duration::from_secs(30));
    // Graceful: the holder gets SIGTERM; force: SIGKILL.
    for (res, mb, force, signal) in [
        ("R", 1, false, libc::SIGTERM),
        ("S", 2, true, libc::SIGKILL),
    ] {
        let mut held = spawn_holder(&h1, &h1.resource(res, mb), "exec sleep 600");
        wait_lease_shown(&h1, 1);
        let t0 = Instant::now();
        let mut args = vec!["resource", "request"];
        let r2 = h2.resource(res, mb);
        args.push(&r2);
        if force {
            args.push("--force");
        }
        let v = h2.json(&args);
        assert_eq!(v["owner"], 1, "{v}");
        let s = wait_end(&mut held, Duration::from_secs(20), "requested holder");
        assert_eq!(s.signal(), Some(signal), "{s:?}\n{}", h1.log());
        let took = t0.elapsed();
        // Then host 2 gets it (host 1 released it when its holder exited).
        take_over(&h2, &r2, "true", Duration::from_secs(10));
        eprintln!("request {res} (force {force}): holder signalled {took:?} after the request");
        while h1.json(&["status"])["leases"]
            .as_array()
            .is_some_and(|l| !l.is_empty())
        {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // A free lease: nothing to request.
    let v = h2.json(&["resource", "request", &h2.resource("R", 1)]);
    assert_eq!(v["owner"], serde_json::Value::Null, "{v}");
}

/// A FORCE request from another host arrives while local clients race for the lease: its holder
/// is SIGKILLed, and while that holder's release is written and after, another local client's
/// acquire is refused or granted — never while the killed holder still held it (oracle), and a
/// local client granted the lease after the kill (lver past the request's) is not killed by the
/// same request.
#[test]
fn a_force_request_arriving_while_local_clients_race_keeps_them_apart() {
    if !can_run() {
        return;
    }
    use std::os::unix::process::ExitStatusExt;
    let backing = BackingFile::new(16 << 20);
    let base = LoopDevice::attach(backing.path(), 512);
    format_area(&base.path_str(), &[("R", 1)]);
    let h1 = Host::start(1, backing.path());
    let h2 = Host::start(2, backing.path());
    h1.wait_joined(Duration::from_secs(30));
    h2.wait_joined(Duration::from_secs(30));
    let oracle = h1.dir.path().join("oracle");
    let r1 = h1.resource("R", 1);
    // The holder is one process holding the oracle (no child inherits its registration).
    let single = format!(
        "exec /usr/bin/python3 -c 'import fcntl, sys, time\nf = open(\"{o}\", \"w\")\ntry:\n    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept OSError:\n    sys.exit(99)\ntime.sleep(600)'",
        o = oracle.display()
    );
    let mut a = spawn_holder(&h1, &r1, &single);
    wait_lease_shown(&h1, 1);
    // Local racers: each try holds the oracle 0.3 s, or is refused at once.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (granted, refused) = std::thread::scope(|s| {
        let racer = s.spawn(|| {
            let (mut granted, mut refused) = (0u32, 0u32);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let out = h1
                    .tenure(&["run", "--no-wait", "--lease", &r1, "--", "sh", "-c"])
                    .arg(oracle_cmd(&oracle, "0.3"))
                    .output()
                    .unwrap();
                match out.status.code() {
                    Some(0) => granted += 1,
                    Some(99) => panic!("two local holders at once (oracle)\n{}", h1.log()),
                    _ => {
                        let e = String::from_utf8_lossy(&out.stderr);
                        assert!(
                            ["(Exists)", "(Busy)", "(Releasing)"]
                                .iter()
                                .any(|k| e.contains(k)),
                            "unexpected refusal: {e}"
                        );
                        refused += 1;
                    }
                }
            }
            (granted, refused)
        });
        std::thread::sleep(Duration::from_millis(500));
        let v = h2.json(&["resource", "request", "--force", &h2.resource("R", 1)]);
        assert_eq!(v["owner"], 1, "{v}");
        let st = wait_end(&mut a, Duration::from_secs(20), "requested holder");
        assert_eq!(st.signal(), Some(libc::SIGKILL), "{st:?}\n{}", h1.log());
        // Let the racers take it over a few times after the kill (lver past the request's).
        std::thread::sleep(Duration::from_secs(3));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        racer.join().unwrap()
    });
    eprintln!("local racers: {granted} granted, {refused} refused");
    assert!(refused > 0, "the racers met the holder");
    assert!(
        granted > 0,
        "a local client got the lease after the kill, and was not killed by the old request"
    );
}

/// Persistent leases and orphans through the native CLI (issue 17): `tenure run
/// --persistent` leaves an orphan when its command exits, listed by `tenure resource
/// orphans`; a plain `tenure run` of the resource is refused with `orphan`; one with
/// `--adopt-orphan` adopts it (and, not persistent itself, releases it at exit); `tenure
/// resource release --orphan` releases an orphan on disk.
#[test]
fn persistent_leases_and_orphans_through_the_native_cli() {
    if !can_run() {
        return;
    }
    let backing = BackingFile::new(16 << 20);
    let base = LoopDevice::attach(backing.path(), 512);
    format_area(&base.path_str(), &[("P", 1)]);
    let h = Host::start(1, backing.path());
    h.wait_joined(Duration::from_secs(30));
    let res = h.resource("P", 1);
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "--lease", &res];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "true"]);
        h.tenure(&args).output().unwrap()
    };
    let orphans = || -> Vec<Value> {
        h.json(&["resource", "orphans"])["orphans"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let owners = || -> Value { h.json(&["resource", "owners", &res]) };
    let out = run(&["--persistent"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let o = orphans();
    assert_eq!(o.len(), 1, "{o:?}\n{}", h.log());
    assert_eq!(o[0]["owner"], "orphan");
    assert!(
        owners().to_string().contains("\"host_id\":1"),
        "still ours on disk: {}",
        owners()
    );
    let out = run(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("orphan"), "{err}");
    let out = run(&["--adopt-orphan"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t0 = Instant::now();
    while !orphans().is_empty()
        || !h.json(&["status"])["leases"]
            .as_array()
            .is_some_and(Vec::is_empty)
    {
        assert!(t0.elapsed() < Duration::from_secs(10), "{}", h.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = run(&["--persistent"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(orphans().len(), 1);
    let rel = h.json(&["resource", "release", "--orphan", LS]);
    assert_eq!(rel["orphans_released"], serde_json::json!(["P"]), "{rel}");
    let t0 = Instant::now();
    while owners().to_string().contains("\"host_id\":1") {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "released on disk: {}",
            owners()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(orphans().is_empty());
    let out = run(&[]);
    assert!(
        out.status.success(),
        "free again: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Issue 18, restart after a crash: tenured SIGKILLed with a lease held and started again
/// within the renewal deadline adopts what the dead one held. The lease stays with its
/// holder (same lver), the other host sees host 1 live in the same generation all along, the
/// watchdog never fires, the other host cannot take the lease while the holder runs, and
/// when the holder exits the adopted lease is released and taken by the other host.
#[test]
fn a_daemon_restarted_within_the_deadline_adopts_its_leases_without_a_reset() {
    if !can_run() {
        return;
    }
    let backing = BackingFile::new(16 << 20);
    let base = LoopDevice::attach(backing.path(), 512);
    format_area(&base.path_str(), &[("R", 1)]);
    let mut h1 = Host::start(1, backing.path());
    let h2 = Host::start(2, backing.path());
    h1.wait_joined(Duration::from_secs(30));
    h2.wait_joined(Duration::from_secs(30));
    let oracle_dir = tempfile::tempdir().unwrap();
    let oracle = oracle_dir.path().join("held");
    let mut holder = spawn_holder(&h1, &h1.resource("R", 1), &oracle_cmd(&oracle, "600"));
    let t0 = Instant::now();
    let lease = loop {
        if let Some(l) = h1.json(&["status"])["leases"]
            .as_array()
            .and_then(|l| l.first())
        {
            break l.clone();
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{}", h1.log());
        std::thread::sleep(Duration::from_millis(100));
    };
    let t0 = Instant::now();
    let generation = loop {
        let (st, g) = h2.sees(1);
        if st == "live" {
            break g;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "host 2 sees host 1 {st}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(h1.tenured.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let killed = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    h1.restart_tenured();
    let t0 = Instant::now();
    let status = loop {
        if h1.socket().exists() {
            let out = h1.tenure(&["status", "--json"]).output().unwrap();
            if out.status.success() {
                let v: Value = serde_json::from_slice(&out.stdout).unwrap();
                if !v["adopted"].is_null() {
                    break v;
                }
                panic!("not adopted: {v}\n{}", h1.log());
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "not serving\n{}",
            h1.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let served_after = killed.elapsed();
    let l = &status["leases"][0];
    assert_eq!(l["lver"], lease["lver"], "{status}");
    assert_eq!(l["pid"], lease["pid"], "{status}");
    assert_eq!(
        l["owner"], "pid",
        "the dead connection's lease is its pid's now: {status}"
    );
    assert_eq!(
        status["lockspaces"][0]["detail"]["generation"], generation,
        "{status}"
    );
    // 12 s (past 8T of the last renewal before the kill, and past W): nothing changes.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(12) {
        let (st, g) = h2.sees(1);
        assert_eq!(
            (st.as_str(), g),
            ("live", generation),
            "host 2's view of host 1"
        );
        let out = try_take_r(&h2, &oracle);
        assert!(!out.status.success(), "host 2 took the adopted lease");
        assert!(
            holder.try_wait().unwrap().is_none(),
            "the holder was killed"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let fired = std::fs::read_to_string(h1.dir.path().join("fired.log")).unwrap_or_default();
    assert!(fired.is_empty(), "the watchdog fired: {fired}");
    // The holder exits: its adopted lease is released, and host 2 gets it.
    let _ = holder.kill();
    let _ = holder.wait();
    wait_taken_r(
        &h2,
        &oracle,
        "the adopted lease was not released when its holder exited",
        &|| h1.log(),
    );
    eprintln!(
        "restarted tenured served {served_after:?} after the SIGKILL, adopted lver {}",
        lease["lver"]
    );
}

/// A restart after the renewal deadline adopts nothing: the pending reset stays pending, the
/// watchdog fires and kills the holder (today's rule; the guard of the adoption rule bites).
#[test]
fn a_daemon_restarted_after_the_deadline_adopts_nothing_and_the_watchdog_fires() {
    if !can_run() {
        return;
    }
    let backing = BackingFile::new(16 << 20);
    let base = LoopDevice::attach(backing.path(), 512);
    format_area(&base.path_str(), &[("R", 1)]);
    // W = 20 s: the host is still up when the restart comes 10 s after the kill (past 8T).
    let mut h1 = Host::start_with(1, backing.path(), 20);
    h1.wait_joined(Duration::from_secs(30));
    let oracle_dir = tempfile::tempdir().unwrap();
    let oracle = oracle_dir.path().join("held");
    let mut holder = spawn_holder(&h1, &h1.resource("R", 1), &oracle_cmd(&oracle, "600"));
    let t0 = Instant::now();
    while h1.json(&["status"])["leases"]
        .as_array()
        .is_none_or(|l| l.is_empty())
    {
        assert!(t0.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(100));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(h1.tenured.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(8 * T + 2));
    h1.restart_tenured();
    let t0 = Instant::now();
    loop {
        let rec = std::fs::read_to_string(h1.dir.path().join("fired.log")).unwrap_or_default();
        if !rec.is_empty() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the watchdog did not fire\n{}",
            h1.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = h1.log();
    assert!(log.contains("not adopted"), "{log}");
    assert!(!log.contains("adopted the state"), "{log}");
    let status = holder.wait().unwrap();
    assert!(
        status.code().is_none(),
        "the holder was killed by the reset: {status:?}"
    );
}

/// Reads one native frame from `s` (10 s at most).
fn read_frame(s: &mut UnixStream) -> Value {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    serde_json::from_slice(&body).unwrap()
}

/// Issue 18, planned upgrade: `tenure daemon upgrade` to a second build hands everything
/// over. The lease stays with its connection (the holder's registration survives), an idle
/// client's connection goes on answering, the other host sees host 1 live in the same
/// generation, the watchdog never fires, and when the holder exits its lease is released
/// by the new process. An upgrade to a binary that fails leaves the old one serving.
#[test]
fn a_planned_upgrade_keeps_leases_connections_and_the_watchdog() {
    if !can_run() {
        return;
    }
    let backing = BackingFile::new(16 << 20);
    let base = LoopDevice::attach(backing.path(), 512);
    format_area(&base.path_str(), &[("R", 1)]);
    let h1 = Host::start(1, backing.path());
    let h2 = Host::start(2, backing.path());
    h1.wait_joined(Duration::from_secs(30));
    h2.wait_joined(Duration::from_secs(30));
    let oracle_dir = tempfile::tempdir().unwrap();
    let oracle = oracle_dir.path().join("held");
    let mut holder = spawn_holder(&h1, &h1.resource("R", 1), &oracle_cmd(&oracle, "600"));
    let t0 = Instant::now();
    let before = loop {
        let v = h1.json(&["status"]);
        if v["leases"].as_array().is_some_and(|l| !l.is_empty()) {
            break v;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{}", h1.log());
        std::thread::sleep(Duration::from_millis(100));
    };
    let generation = before["lockspaces"][0]["detail"]["generation"].clone();
    let t0 = Instant::now();
    while h2.sees(1).0 != "live" {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "host 2 never saw host 1 live"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // An idle client that said hello before the upgrade.
    let mut idle = UnixStream::connect(h1.socket()).unwrap();
    idle.write_all(&frame(r#"{"op":"hello","version":1}"#))
        .unwrap();
    let hello = read_frame(&mut idle);
    assert!(hello.get("error").is_none(), "{hello}");
    // A failing binary: refused, the old one goes on.
    let out = h1
        .tenure(&["daemon", "upgrade", "--binary", "/bin/false"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(
        why.contains("exited before taking over") || why.contains("closed"),
        "{why}"
    );
    let still = h1.json(&["status"]);
    assert_eq!(still["leases"][0]["lver"], before["leases"][0]["lver"]);
    // A binary that connects, reads the hand-over and refuses it (another version of the
    // document): the old one goes on, and says why.
    let bin_dir = tempfile::tempdir().unwrap();
    let refuser = bin_dir.path().join("tenured-refuses");
    std::fs::write(
        &refuser,
        "#!/usr/bin/python3\nimport socket, sys\ns = socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[-1])\ns.recv(1 << 20)\ns.sendall(b'error: the hand-over is tenured-handover version 1; this build reads version 2\\n')\ns.recv(1)\n",
    )
    .unwrap();
    std::fs::set_permissions(
        &refuser,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let out = h1
        .tenure(&["daemon", "upgrade", "--binary"])
        .arg(&refuser)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(
        why.contains("refused the hand-over") && why.contains("version 2"),
        "{why}"
    );
    let still = h1.json(&["status"]);
    assert_eq!(still["pid"], before["pid"], "the old one serves on");
    assert_eq!(still["leases"][0]["lver"], before["leases"][0]["lver"]);
    // A second build: the same code in another file.
    let second = bin_dir.path().join("tenured-second");
    std::fs::copy(tenured_bin(), &second).unwrap();
    let old_pid = h1.tenured.id();
    let t0 = Instant::now();
    let out = h1
        .tenure(&["daemon", "upgrade", "--json", "--binary"])
        .arg(&second)
        .output()
        .unwrap();
    let took = t0.elapsed();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        h1.log()
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["from_pid"], old_pid, "{r}");
    let new_pid = r["pid"].as_u64().unwrap();
    assert_ne!(new_pid, u64::from(old_pid));
    let after = h1.json(&["status"]);
    assert_eq!(
        after["leases"][0]["lver"], before["leases"][0]["lver"],
        "{after}"
    );
    assert_eq!(
        after["leases"][0]["pid"], before["leases"][0]["pid"],
        "{after}"
    );
    assert_eq!(
        after["leases"][0]["owner"], "connection",
        "the holder's connection was handed over: {after}"
    );
    assert_eq!(
        after["lockspaces"][0]["detail"]["generation"], generation,
        "{after}"
    );
    // The idle client's connection answers on.
    idle.write_all(&frame(r#"{"op":"status"}"#)).unwrap();
    let st = read_frame(&mut idle);
    assert!(st.to_string().contains("\"uptime_s\""), "{st}");
    // 10 s on: the other host sees nothing change, the watchdog stays fed.
    let t1 = Instant::now();
    while t1.elapsed() < Duration::from_secs(10) {
        let (s, g) = h2.sees(1);
        assert_eq!((s.as_str(), Value::from(g)), ("live", generation.clone()));
        assert!(
            holder.try_wait().unwrap().is_none(),
            "the holder was killed"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let fired = std::fs::read_to_string(h1.dir.path().join("fired.log")).unwrap_or_default();
    assert!(fired.is_empty(), "the watchdog fired: {fired}");
    // The holder exits: its connection closes (the sleep flock started holds it too), the
    // new process releases the lease.
    let _ = Command::new("pkill")
        .args(["-KILL", "-P", &holder.id().to_string()])
        .status();
    let _ = holder.kill();
    let _ = holder.wait();
    wait_taken_r(&h2, &oracle, "not released by the new process", &|| {
        h1.log()
    });
    eprintln!("upgrade took {took:?} (request to reply), new pid {new_pid}");
}

/// One try of host `h` to hold `R` (1M) for a moment with `tenure run --no-wait`, the oracle
/// checked: exit status 99 (two holders at once) fails the test.
fn try_take_r(h: &Host, oracle: &Path) -> Output {
    let out = h
        .tenure(&[
            "run",
            "--no-wait",
            "--lease",
            &h.resource("R", 1),
            "--",
            "sh",
            "-c",
            &oracle_cmd(oracle, "0.1"),
        ])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(99), "two holders at once");
    out
}

/// Waits (10 s at most) until host `h` can take `R`: the lease was released elsewhere.
fn wait_taken_r(h: &Host, oracle: &Path, what: &str, log: &dyn Fn() -> String) {
    let t0 = Instant::now();
    loop {
        let out = try_take_r(h, oracle);
        if out.status.success() {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{what}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The samples of a Prometheus text exposition, parsed by the `prometheus_client` Python
/// package's parser (Debian's python3-prometheus-client): (name, labels, value).
fn parse_exposition(text: &str) -> Vec<(String, Value, f64)> {
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        out.append([s.name, s.labels, s.value])
print(json.dumps(out))
"#;
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Vec<(String, Value, f64)> = serde_json::from_slice(&out.stdout).unwrap();
    v
}

/// The value of the sample `name` whose labels include `labels` (None: absent).
fn sample(samples: &[(String, Value, f64)], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l[*k] == *v))
        .map(|s| s.2)
}

/// An HTTP/1.0 exchange with the metrics endpoint: (status line, body).
fn http(addr: &str, request: &[u8]) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

fn scrape(addr: &str) -> Vec<(String, Value, f64)> {
    let (status, body) = http(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    parse_exposition(&body)
}

/// Issue 20, metrics: the HTTP endpoint and `tenure metrics` serve an exposition that a real
/// Prometheus parser reads, and its values follow what happens: renewals counted, a lease
/// held and let go, a refused acquire counted with its error, I/O latency, the watchdog
/// armed and fed. Bad HTTP requests get their status codes.
#[test]
fn metrics_follow_renewals_leases_and_refusals() {
    if !can_run() {
        return;
    }
    if !prerequisite(
        Command::new("/usr/bin/python3")
            .args(["-c", "import prometheus_client"])
            .status()
            .is_ok_and(|s| s.success()),
        "python3-prometheus-client",
    ) {
        return;
    }
    let backing = BackingFile::new(16 << 20);
    let base = LoopDevice::attach(backing.path(), 512);
    format_area(&base.path_str(), &[("M", 1)]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let h = Host::start_cfg(
        1,
        backing.path(),
        W,
        &format!("[metrics]\nlisten = \"{addr}\"\n"),
    );
    h.wait_joined(Duration::from_secs(30));
    let ls = [("lockspace", LS)];
    let s0 = scrape(&addr);
    assert_eq!(
        sample(
            &s0,
            "tenure_lockspace_state",
            &[("lockspace", LS), ("state", "joined")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &s0,
            "tenure_leases_held",
            &[("lockspace", LS), ("mode", "exclusive")]
        ),
        Some(0.0)
    );
    assert_eq!(sample(&s0, "tenure_watchdog_armed", &[]), Some(1.0));
    let headroom = sample(&s0, "tenure_lockspace_renewal_headroom_seconds", &ls).unwrap();
    assert!(
        headroom > 0.0 && headroom <= (8 * T) as f64,
        "headroom {headroom}"
    );
    // The CLI serves the same families.
    let out = h.tenure(&["metrics"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli = parse_exposition(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        sample(
            &cli,
            "tenure_lockspace_state",
            &[("lockspace", LS), ("state", "joined")]
        ),
        Some(1.0)
    );
    // Renewals are counted as they happen (every 2T).
    let renewals = |s: &[(String, Value, f64)]| {
        sample(s, "tenure_renewal_duration_seconds_count", &ls).unwrap_or(0.0)
    };
    let r0 = renewals(&s0);
    let t0 = Instant::now();
    while renewals(&scrape(&addr)) < r0 + 2.0 {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "renewals not counted\n{}",
            h.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A lease held shows; a second acquire refused is counted with its error code.
    let res = h.resource("M", 1);
    let mut holder = spawn_holder(&h, &res, "exec sleep 60");
    wait_lease_shown(&h, 1);
    let s1 = scrape(&addr);
    assert_eq!(
        sample(
            &s1,
            "tenure_leases_held",
            &[("lockspace", LS), ("mode", "exclusive")]
        ),
        Some(1.0)
    );
    assert!(
        sample(
            &s1,
            "tenure_operations_total",
            &[
                ("protocol", "native"),
                ("kind", "acquire"),
                ("result", "ok")
            ]
        ) >= Some(1.0),
        "{s1:?}"
    );
    assert!(sample(&s1, "tenure_clients", &[("protocol", "native")]) >= Some(1.0));
    let refused_before: f64 = s1
        .iter()
        .filter(|(n, l, _)| {
            n == "tenure_operations_total" && l["kind"] == "acquire" && l["result"] != "ok"
        })
        .map(|s| s.2)
        .sum();
    let out = h
        .tenure(&["run", "--no-wait", "--lease", &res, "--", "true"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the lease is held");
    let s2 = scrape(&addr);
    let refused: Vec<_> = s2
        .iter()
        .filter(|(n, l, _)| {
            n == "tenure_operations_total" && l["kind"] == "acquire" && l["result"] != "ok"
        })
        .collect();
    assert_eq!(
        refused.iter().map(|s| s.2).sum::<f64>(),
        refused_before + 1.0,
        "{refused:?}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        sample(
            &s2,
            "tenure_operation_duration_seconds_count",
            &[("protocol", "native"), ("kind", "acquire")]
        ) >= Some(2.0)
    );
    // The engine's I/O: reads and writes done, with latencies.
    for op in ["read", "write"] {
        assert!(
            sample(
                &s2,
                "tenure_io_completions_total",
                &[("op", op), ("result", "done")]
            ) > Some(0.0),
            "{op}: {s2:?}"
        );
        assert!(sample(&s2, "tenure_io_duration_seconds_count", &[("op", op)]) > Some(0.0));
    }
    let fed = sample(&s2, "tenure_watchdog_fed_age_seconds", &[]).expect("fed");
    assert!(fed < W as f64, "fed {fed} s ago");
    let _ = holder.kill();
    let _ = holder.wait();
    let t0 = Instant::now();
    while sample(
        &scrape(&addr),
        "tenure_leases_held",
        &[("lockspace", LS), ("mode", "exclusive")],
    ) != Some(0.0)
    {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "lease never released\n{}",
            h.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Bad requests.
    assert_eq!(
        http(&addr, b"GET / HTTP/1.1\r\n\r\n").0,
        "HTTP/1.1 404 Not Found"
    );
    assert_eq!(
        http(&addr, b"POST /metrics HTTP/1.1\r\n\r\n").0,
        "HTTP/1.1 405 Method Not Allowed"
    );
    assert_eq!(http(&addr, b"hello\r\n\r\n").0, "HTTP/1.1 400 Bad Request");
    let mut big = b"GET /metrics HTTP/1.1\r\n".to_vec();
    big.extend(std::iter::repeat_n(b'x', 20_000));
    assert_eq!(
        http(&addr, &big).0,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    // A client that connects and says nothing does not block the next scrape for long.
    let _idle = std::net::TcpStream::connect(&addr).unwrap();
    let t0 = Instant::now();
    let _ = scrape(&addr);
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "a silent client held the endpoint {:?}",
        t0.elapsed()
    );
    // The daemon is fine after all that.
    assert_eq!(
        h.json(&["lockspace", "list"])["lockspaces"][0]["state"],
        "joined"
    );
}
