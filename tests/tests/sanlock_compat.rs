//! Unmodified sanlock clients against tenured's sanlock-compatible socket: python3-sanlock
//! (Debian's, through libsanlock_client) and raw sockets, with a second tenured host on the
//! same storage speaking the native protocol. Mixed protocols must see the same leases.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tenure_tests::{
    is_root, prerequisite, sanlock_available, sanlock_lock, tenure_bin, tenured_bin, BackingFile,
    LoopDevice, SanlockDaemon,
};

struct Daemon {
    dir: tempfile::TempDir,
    child: Child,
}

impl Daemon {
    fn start(sanlock: bool, lockspace: Option<String>) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("tenured-sl-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let d = dir.path();
        let mut c = Command::new(tenured_bin());
        c.env("TENURE_CAPTURE_DIR", tenure_tests::capture_dir())
            .args(["--config", "/dev/null", "--run-dir"])
            .arg(d.join("run"))
            .arg("--state-dir")
            .arg(d.join("state"))
            .args(["--watchdog", "none", "--io-timeout", "1"])
            .args(["--kill-grace", "2", "--sigkill-max", "2"])
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("log")).unwrap());
        if let Some(ls) = lockspace {
            c.arg("--lockspace").arg(ls);
        }
        if sanlock {
            c.arg("--sanlock-compat")
                .arg("--sanlock-run-dir")
                .arg(d.join("sl"));
        }
        let child = c.spawn().unwrap();
        let me = Daemon { dir, child };
        let t0 = Instant::now();
        while !me.socket().exists() {
            assert!(t0.elapsed() < Duration::from_secs(10), "{}", me.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        me
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("run/tenured.sock")
    }

    fn sanlock_dir(&self) -> PathBuf {
        self.dir.path().join("sl")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    fn tenure(&self, args: &[&str]) -> std::process::Output {
        Command::new(tenure_bin())
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.wait();
    }
}

/// Runs `tenure ARGS` (no daemon) and asserts it succeeded.
fn tenure_ok(args: &[&str]) {
    let out = Command::new(tenure_bin()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn python(d: &Daemon, script: &str) -> Child {
    Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .env("SANLOCK_RUN_DIR", d.sanlock_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for a python client; on failure shows its output and tenured's log as of then.
fn finish(mut c: Child, what: &str, d: &Daemon) -> String {
    let mut out = String::new();
    c.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let mut err = String::new();
    c.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let st = c.wait().unwrap();
    assert!(
        st.success(),
        "{what} failed:\n{out}\n{err}\n--- tenured ---\n{}",
        d.log()
    );
    out
}

#[test]
fn python3_sanlock_drives_tenured_and_sees_the_same_leases_as_native_clients() {
    if !prerequisite(is_root(), "root") || !sanlock_available() {
        return;
    }
    let backing = BackingFile::new(16 << 20);
    let d1 = LoopDevice::attach(backing.path(), 512);
    let d2 = LoopDevice::attach(backing.path(), 512);
    let (p1, p2) = (d1.path_str(), d2.path_str());
    let t = tenure_ok;
    t(&[
        "lockspace",
        "init",
        &format!("LS:0:{p1}:0"),
        "--io-timeout",
        "1",
    ]);
    for (r, mb) in [("R1", 1), ("R2", 2)] {
        t(&[
            "resource",
            "init",
            &format!("LS:{r}:{p1}:{mb}M"),
            "--num-hosts",
            "8",
        ]);
    }
    // Host 2: native only, joined at start; it holds R2 through `tenure run`.
    let h2 = Daemon::start(false, Some(format!("LS:2:{p2}:0")));
    // Host 1: the sanlock-compatible socket; python3-sanlock joins it.
    let h1 = Daemon::start(true, None);
    let t0 = Instant::now();
    loop {
        let out = h2.tenure(&["lockspace", "list", "--json"]);
        if String::from_utf8_lossy(&out.stdout).contains("\"joined\"") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "{}", h2.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut holder2 = Command::new(tenure_bin())
        .arg("--socket")
        .arg(h2.socket())
        .args([
            "run",
            "--lease",
            &format!("LS:R2:{p2}:2M"),
            "--",
            "sleep",
            "60",
        ])
        .spawn()
        .unwrap();

    let lifecycle = format!(
        r#"
import sanlock, os, time
p = b"{p1}"
# Storage commands: the daemon formats and reads areas.
sanlock.write_resource(b"LS", b"R3", [(p, 3 * 1048576)])
r = sanlock.read_resource(p, 3 * 1048576)
assert r['lockspace'] == b'LS' and r['resource'] == b'R3', r
assert sanlock.read_lockspace(p)['lockspace'] == b'LS'
try:
    sanlock.read_resource(p, 5 * 1048576)
    raise SystemExit("read of an unformatted area succeeded")
except sanlock.SanlockException as e:
    assert e.errno == -223, e
assert sanlock.add_lockspace(b"LS", 1, p, 0, wait=False) is None
assert sanlock.inq_lockspace(b"LS", 1, p, 0) is None          # in progress
assert sanlock.inq_lockspace(b"LS", 1, p, 0, wait=True) is True
def errno(f):
    try:
        f()
    except sanlock.SanlockException as e:
        return e.errno
    return 0
assert errno(lambda: sanlock.add_lockspace(b"LS", 1, p, 0)) == 17
assert errno(lambda: sanlock.add_lockspace(b"LS", 3, p, 0)) == 22
ls = sanlock.get_lockspaces()
assert ls == [{{'lockspace': b'LS', 'host_id': 1, 'path': "{p1}", 'offset': 0, 'flags': 0}}], ls
fd = sanlock.register()
sanlock.acquire(b"LS", b"R1", [(p, 1048576)], slkfd=fd)
o = sanlock.read_resource_owners(b"LS", b"R1", [(p, 1048576)])
assert len(o) == 1 and o[0]['host_id'] == 1, o
q = sanlock.inquire(slkfd=fd)
assert len(q) == 1 and q[0]['resource'] == b'R1' and q[0]['flags'] == 1 and q[0]['version'] >= 1, q
assert sanlock.inquire(pid=os.getpid()) == q
assert errno(lambda: sanlock.acquire(b"LS", b"R1", [(p, 1048576)], slkfd=fd)) == 17
sanlock.release(b"LS", b"R1", [(p, 1048576)], slkfd=fd)
assert errno(lambda: sanlock.release(b"LS", b"R1", [(p, 1048576)], slkfd=fd)) == 1
# R2 is held by live host 2 (native protocol): -243, "Lease is held by another host".
for _ in range(100):
    e = errno(lambda: sanlock.acquire(b"LS", b"R2", [(p, 2 * 1048576)], slkfd=fd))
    if e == -243:
        break
    time.sleep(0.1)
assert e == -243, e
assert errno(lambda: sanlock.inquire(pid=999999)) == 3
hosts = sanlock.get_hosts(b"LS")
assert any(h['host_id'] == 2 and h['flags'] in (1, 3) for h in hosts), hosts
# LVB: set while holding (written at release), read by the next acquire with lvb.
sanlock.acquire(b"LS", b"R1", [(p, 1048576)], slkfd=fd, lvb=True)
sanlock.set_lvb(b"LS", b"R1", [(p, 1048576)], b"hello")
assert sanlock.get_lvb(b"LS", b"R1", [(p, 1048576)], 16) == b"hello" + b"\0" * 11
sanlock.release(b"LS", b"R1", [(p, 1048576)], slkfd=fd)
assert errno(lambda: sanlock.get_lvb(b"LS", b"R1", [(p, 1048576)], 16)) == 2
sanlock.acquire(b"LS", b"R1", [(p, 1048576)], slkfd=fd, lvb=True)
assert sanlock.get_lvb(b"LS", b"R1", [(p, 1048576)], 8) == b"hello\0\0\0"
sanlock.release(b"LS", b"R1", [(p, 1048576)], slkfd=fd)
# Shared: the state string says SH.
sanlock.acquire(b"LS", b"R1", [(p, 1048576)], slkfd=fd, shared=True)
q = sanlock.inquire(slkfd=fd)
assert q[0]['flags'] == 4, q
sanlock.release(b"LS", b"R1", [(p, 1048576)], slkfd=fd)
# Hold R1 exclusively and tell the test; the lease goes when this process exits.
sanlock.acquire(b"LS", b"R1", [(p, 1048576)], slkfd=fd)
print("HELD", flush=True)
time.sleep(4)
print("DONE")
"#
    );
    let mut py = python(&h1, &lifecycle);
    let mut lines = BufReader::new(py.stdout.take().unwrap()).lines();
    let first = lines.next().map(|l| l.unwrap()).unwrap_or_default();
    if first != "HELD" {
        let mut err = String::new();
        py.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        let _ = py.wait();
        panic!("python: {first}\n{err}\n--- tenured ---\n{}", h1.log());
    }
    // The native side sees the python client's lease: status on host 1, refusal on host 2.
    let st = h1.tenure(&["status", "--json"]);
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(st["leases"][0]["resource"], "R1", "{st}");
    assert_eq!(st["leases"][0]["pid"], py.id() as i64, "{st}");
    let out = h2.tenure(&[
        "run",
        "--no-wait",
        "--lease",
        &format!("LS:R1:{p2}:1M"),
        "--",
        "true",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("OwnerAlive") && err.contains("host id 1"),
        "{err}"
    );
    assert_eq!(lines.next().map(|l| l.unwrap()).as_deref(), Some("DONE"));
    let st = py.wait().unwrap();
    assert!(st.success());
    // The connection closed with the process: host 2 gets R1 now.
    let t0 = Instant::now();
    loop {
        let out = h2.tenure(&[
            "run",
            "--no-wait",
            "--lease",
            &format!("LS:R1:{p2}:1M"),
            "--",
            "true",
        ]);
        if out.status.success() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Raw socket: bad magic and an unknown command are ignored (no reply, connection open);
    // VERSION on the same connection is answered with 3.8.5 and seq 0.
    let mut s = UnixStream::connect(h1.sanlock_dir().join("sanlock.sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let hdr = |magic: u32, cmd: u32, seq: u32| {
        let mut v = Vec::new();
        for x in [magic, 1, cmd, 0, 32, seq, 0, 0] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        v
    };
    s.write_all(&hdr(0xdead_beef, 28, 5)).unwrap();
    s.write_all(&hdr(0x0428_2010, 99, 6)).unwrap();
    let mut buf = [0u8; 32];
    assert!(
        s.read_exact(&mut buf).is_err(),
        "no reply to ignored messages"
    );
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&hdr(0x0428_2010, 28, 1234)).unwrap();
    s.read_exact(&mut buf).unwrap();
    let word = |i: usize| u32::from_le_bytes(buf[i * 4..i * 4 + 4].try_into().unwrap());
    assert_eq!(
        (word(0), word(2), word(5), word(7)),
        (0x0428_2010, 28, 0, 0x0308_0500)
    );
    // Raw requests: a PERSISTENT acquire and ORPHAN_ONLY naming R9 where R1's leader is
    // (-227, the resource name differs, as sanlock), REL_ORPHAN with no orphan (a count: 0),
    // REL_RENAME of a lease not held (two resources read; -1).
    let mut r = UnixStream::connect(h1.sanlock_dir().join("sanlock.sock")).unwrap();
    r.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let msg = |cmd: u32, flags: u32, data: u32, payload: &[u8]| {
        let mut v = Vec::new();
        let len = 32 + payload.len() as u32;
        for x in [0x0428_2010u32, 1, cmd, flags, len, 0, data, u32::MAX] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        v.extend_from_slice(payload);
        v
    };
    let result = |r: &mut UnixStream| {
        let mut b = [0u8; 32];
        r.read_exact(&mut b).unwrap();
        i32::from_le_bytes(b[24..28].try_into().unwrap())
    };
    r.write_all(&msg(1, 0, 0, &[])).unwrap(); // REGISTER: no reply
    let mut res = vec![0u8; 128 + 1040 + 56];
    res[..2].copy_from_slice(b"LS");
    res[48..50].copy_from_slice(b"R9");
    res[124..128].copy_from_slice(&1u32.to_le_bytes()); // num_disks
    res[128..128 + p1.len()].copy_from_slice(p1.as_bytes());
    res[128 + 1024..128 + 1032].copy_from_slice(&(1u64 << 20).to_le_bytes());
    let mut persistent = res.clone();
    persistent[120..124].copy_from_slice(&8u32.to_le_bytes()); // RES_PERSISTENT
    r.write_all(&msg(7, 0, 1, &persistent)).unwrap();
    assert_eq!(result(&mut r), -227, "PERSISTENT, another resource's area");
    r.write_all(&msg(7, 0x4, 1, &res)).unwrap();
    assert_eq!(
        result(&mut r),
        -227,
        "ACQUIRE_ORPHAN_ONLY, another resource's area"
    );
    r.write_all(&msg(8, 0x4, 1, &res[..128])).unwrap();
    assert_eq!(result(&mut r), 0, "REL_ORPHAN: none");
    let two = [&res[..128], &res[..128]].concat();
    r.write_all(&msg(8, 0x2, 2, &two)).unwrap();
    assert_eq!(result(&mut r), -1, "REL_RENAME of a lease not held");
    drop(r);

    // Leave through python; the daemon is idle again.
    let _ = holder2.kill();
    let _ = holder2.wait();
    // Removal with a holder: REM_UNUSED refuses (EBUSY); a plain removal SIGKILLs the holder
    // and returns once the lockspace is gone.
    let rem = python(
        &h1,
        &format!(
            r#"
import os, sanlock, signal, subprocess, sys, time
p = b"{p1}"
child = subprocess.Popen([sys.executable, "-c", '''
import sanlock, sys, time
fd = sanlock.register()
sanlock.acquire(b"LS", b"R1", [(b"{p1}", 1048576)], slkfd=fd)
print("held", flush=True)
time.sleep(60)
'''], stdout=subprocess.PIPE)
assert child.stdout.readline().strip() == b"held"
try:
    sanlock.rem_lockspace(b"LS", 1, p, 0, unused=True)
    raise SystemExit("rem unused succeeded with a holder")
except sanlock.SanlockException as e:
    assert e.errno == 16, e
assert sanlock.rem_lockspace(b"LS", 1, p, 0) is None
assert child.wait(timeout=10) == -signal.SIGKILL, child.returncode
assert sanlock.inq_lockspace(b"LS", 1, p, 0) is False
print("ok")
"#
        ),
    );
    assert_eq!(finish(rem, "rem_lockspace", &h1).trim(), "ok");
    // The sanlock socket's requests are in the metrics, refusals with their errno name.
    let out = h1.tenure(&["metrics"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for line in [
        "tenure_operations_total{protocol=\"sanlock\",kind=\"acquire\",result=\"ok\"} ",
        "tenure_operations_total{protocol=\"sanlock\",kind=\"rem_lockspace\",result=\"EBUSY\"} 1\n",
        "tenure_operation_duration_seconds_count{protocol=\"sanlock\",kind=\"add_lockspace\"} ",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    // `sanlock client shutdown -w 1` stops the idle daemon.
    let out = Command::new("sanlock")
        .args(["client", "shutdown", "-f", "0", "-w", "1"])
        .env("SANLOCK_RUN_DIR", h1.sanlock_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut h1 = h1;
    let t0 = Instant::now();
    while h1.child.try_wait().unwrap().is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "tenured did not shut down"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `sanlock client` command line (sanlock 3.8.5's own) against tenured: version, add,
/// inq, gets, status, host_status, renewal, log_dump, command (acquire then exec), inquire -p,
/// read, rem, shutdown.
/// Twenty python3-sanlock clients acquire twenty free 2000-host leases on a 4 KiB-sector device
/// at once: each acquire reads an 8 MiB area, more than tenured's engine has buffers for at
/// once. The I/O that finds no room waits for some, and every acquire wins, as with real
/// sanlock 3.8.5 on the same device and script (tenured used to refuse half with −202).
#[test]
fn twenty_concurrent_acquires_of_4k_areas_all_win() {
    if !prerequisite(is_root(), "root") || !sanlock_available() {
        return;
    }
    const CLIENTS: u64 = 20;
    const AREA: u64 = 8 << 20;
    let backing = BackingFile::new((CLIENTS + 1) * AREA);
    let dev = LoopDevice::attach(backing.path(), 4096);
    let p = dev.path_str();
    let t = tenure_ok;
    t(&[
        "lockspace",
        "init",
        &format!("LS:0:{p}:0"),
        "--io-timeout",
        "1",
    ]);
    for i in 1..=CLIENTS {
        t(&["resource", "init", &format!("LS:R{i}:{p}:{}M", i * 8)]);
    }
    let d = Daemon::start(true, None);
    let join = format!(
        "import sanlock\nsanlock.add_lockspace(b'LS', 1, b'{p}', 0, iotimeout=1)\n\
         assert sanlock.inq_lockspace(b'LS', 1, b'{p}', 0) is True\n"
    );
    finish(python(&d, &join), "add_lockspace", &d);
    let holders: Vec<Child> = (1..=CLIENTS)
        .map(|i| {
            let script = format!(
                "import sanlock, sys\nfd = sanlock.register()\n\
                 sanlock.acquire(b'LS', b'R{i}', [(b'{p}', {off})], slkfd=fd)\n\
                 print('held', flush=True)\nsys.stdin.readline()\n\
                 sanlock.release(b'LS', b'R{i}', [(b'{p}', {off})], slkfd=fd)\n",
                off = i * AREA
            );
            Command::new("/usr/bin/python3")
                .arg("-c")
                .arg(script)
                .env("SANLOCK_RUN_DIR", d.sanlock_dir())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut held = Vec::new();
    for (i, mut c) in holders.into_iter().enumerate() {
        let mut line = String::new();
        BufReader::new(c.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        if line.trim() != "held" {
            let mut err = String::new();
            c.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            let _ = c.kill();
            let _ = c.wait();
            panic!(
                "client {} did not get R{}: {err}\n--- tenured ---\n{}",
                i + 1,
                i + 1,
                d.log()
            );
        }
        held.push(c);
    }
    // Every lease is held on disk by host 1, each by its own client.
    let out = d.tenure(&["status", "--json"]);
    let status = String::from_utf8_lossy(&out.stdout);
    for i in 1..=CLIENTS {
        assert!(status.contains(&format!("\"R{i}\"")), "R{i} in {status}");
    }
    for mut c in held {
        drop(c.stdin.take());
        let st = c.wait().unwrap();
        assert!(st.success(), "release: {}", d.log());
    }
}

#[test]
fn the_sanlock_client_cli_works_against_tenured() {
    if !prerequisite(is_root(), "root") || !sanlock_available() {
        return;
    }
    let backing = BackingFile::new(16 << 20);
    let dev = LoopDevice::attach(backing.path(), 512);
    let p = dev.path_str();
    let t = tenure_ok;
    t(&[
        "lockspace",
        "init",
        &format!("LS:0:{p}:0"),
        "--io-timeout",
        "1",
    ]);
    t(&[
        "resource",
        "init",
        &format!("LS:R1:{p}:1M"),
        "--num-hosts",
        "8",
    ]);
    let mut d = Daemon::start(true, None);
    let sanlock = |args: &[&str]| -> String {
        let out = Command::new("timeout")
            .arg("20")
            .arg("sanlock")
            .arg("client")
            .args(args)
            .env("SANLOCK_RUN_DIR", d.sanlock_dir())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "sanlock client {args:?}: {text}\n{}",
            d.log()
        );
        text
    };
    let ls = format!("LS:1:{p}:0");
    let res = format!("LS:R1:{p}:1048576");
    assert!(sanlock(&["version"]).contains("daemon version 3.8.5"));
    assert!(sanlock(&["add_lockspace", "-s", &ls]).contains("add_lockspace done 0"));
    assert!(sanlock(&["inq_lockspace", "-s", &ls]).contains("inq_lockspace done 0"));
    let gets = sanlock(&["gets", "-h", "1"]);
    assert!(
        gets.contains(&format!("s {ls}")) && gets.contains("LIVE"),
        "{gets}"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(sanlock(&["host_status", "-s", "LS"]).contains("1 timestamp"));
    assert!(sanlock(&["renewal", "-s", "LS"]).contains("read_ms="));
    // log_dump: the header's data is the byte count, which the CLI also uses as its exit
    // status; only the text matters.
    let dump = Command::new("sanlock")
        .args(["client", "log_dump"])
        .env("SANLOCK_RUN_DIR", d.sanlock_dir())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&dump.stdout).contains("tenured"));
    // command: registers, acquires, then execs the command (which holds the lease).
    let mut cmd = Command::new("sanlock")
        .args(["client", "command", "-r", &res, "-c", "/bin/sleep", "4"])
        .env("SANLOCK_RUN_DIR", d.sanlock_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let status = loop {
        let st = sanlock(&["status"]);
        if st.contains(&format!("r {res}:")) {
            break st;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{st}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let pid = cmd.id().to_string();
    assert!(status.contains(&format!("p {pid}")), "{status}");
    let inq = sanlock(&["inquire", "-p", &pid]);
    assert!(inq.contains(&format!("\"{res}:")), "{inq}");
    assert!(cmd.wait().unwrap().success());
    let read = sanlock(&["read", "-r", &res]);
    assert!(read.contains(&format!("r {res}:1")), "{read}");
    // examine: a request record written straight to disk (no bitmap bit, so nothing notices
    // it) acts once the client asks tenured to examine the resource: FORCE → SIGKILL.
    let mut cmd = Command::new("sanlock")
        .args(["client", "command", "-r", &res, "-c", "/bin/sleep", "60"])
        .env("SANLOCK_RUN_DIR", d.sanlock_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !sanlock(&["status"]).contains(&format!("r {res}:")) {
        assert!(t0.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(format!(
            r#"
import os, struct
rec = struct.pack("<IIQI", 0x08292011, 0x00010001, 100, 1).ljust(512, b"\0")
fd = os.open("{p}", os.O_RDWR)
os.pwrite(fd, rec, 1048576 + 512)
os.fsync(fd)
os.close(fd)
"#
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    std::thread::sleep(Duration::from_secs(3));
    assert!(cmd.try_wait().unwrap().is_none(), "nothing examined yet");
    assert!(sanlock(&["examine", "-s", &ls]).contains("done 0"));
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = cmd.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "examine did not act on the request\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    let t0 = Instant::now();
    while sanlock(&["status"]).contains(&format!("r {res}:")) {
        assert!(t0.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(100));
    }
    // convert: a shared lease held by `command` becomes exclusive; converting again is
    // -EALREADY (-114).
    let mut cmd = Command::new("sanlock")
        .args([
            "client",
            "command",
            "-r",
            &format!("{res}:SH"),
            "-c",
            "/bin/sleep",
            "60",
        ])
        .env("SANLOCK_RUN_DIR", d.sanlock_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = cmd.id().to_string();
    let t0 = Instant::now();
    let inquire = |pid: &str| {
        let out = Command::new("sanlock")
            .args(["client", "inquire", "-p", pid])
            .env("SANLOCK_RUN_DIR", d.sanlock_dir())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Until the command has registered and acquired (inquire -3 before).
    while !inquire(&pid).contains(":SH") {
        assert!(t0.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(sanlock(&["convert", "-r", &res, "-p", &pid]).contains("convert done 0"));
    let inq = sanlock(&["inquire", "-p", &pid]);
    assert!(
        inq.contains(&format!("\"{res}:")) && !inq.contains(":SH"),
        "{inq}"
    );
    let again = Command::new("sanlock")
        .args(["client", "convert", "-r", &res, "-p", &pid])
        .env("SANLOCK_RUN_DIR", d.sanlock_dir())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&again.stdout);
    assert!(text.contains("convert done -114"), "{text}");
    // init through the daemon, then acquire / release for that registered pid.
    let res2 = format!("LS:R2:{p}:2097152");
    assert!(sanlock(&["init", "-r", &res2]).contains("init done 0"));
    assert!(sanlock(&["acquire", "-r", &res2, "-p", &pid]).contains("acquire done 0"));
    let inq = sanlock(&["inquire", "-p", &pid]);
    assert!(inq.contains(&format!("{res2}:")), "{inq}");
    assert!(sanlock(&["release", "-r", &res2, "-p", &pid]).contains("release done 0"));
    let inq = sanlock(&["inquire", "-p", &pid]);
    assert!(!inq.contains("R2"), "{inq}");
    let _ = cmd.kill();
    let _ = cmd.wait();
    let t0 = Instant::now();
    while sanlock(&["status"]).contains(&format!("r {res}:")) {
        assert!(t0.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(100));
    }
    // set_config: a used lockspace cannot be removed until it is unmarked.
    assert!(sanlock(&["set_config", "-s", &ls, "-u", "1"]).contains("done 0"));
    let rem = Command::new("sanlock")
        .args(["client", "rem_lockspace", "-s", &ls])
        .env("SANLOCK_RUN_DIR", d.sanlock_dir())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&rem.stdout);
    assert!(text.contains("rem_lockspace done -16"), "{text}");
    assert!(sanlock(&["set_config", "-s", &ls, "-u", "0"]).contains("done 0"));
    assert!(sanlock(&["rem_lockspace", "-s", &ls]).contains("rem_lockspace done 0"));
    assert!(sanlock(&["shutdown", "-w", "1"]).contains("shutdown done 0"));
    let t0 = Instant::now();
    while d.child.try_wait().unwrap().is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "tenured did not shut down"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Requests cross between the real sanlock daemon (host 1) and tenured (host 2): tenure's
/// FORCE request makes sanlock SIGKILL its holder, and sanlock's makes tenured SIGKILL its own.
#[test]
fn requests_cross_between_sanlock_and_tenured() {
    if !prerequisite(is_root(), "root") || !sanlock_available() {
        return;
    }
    let _serial = sanlock_lock();
    let backing = BackingFile::new(16 << 20);
    let d1 = LoopDevice::attach(backing.path(), 512);
    let d2 = LoopDevice::attach(backing.path(), 512);
    let (p1, p2) = (d1.path_str(), d2.path_str());
    let t = tenure_ok;
    t(&[
        "lockspace",
        "init",
        &format!("LS:0:{p1}:0"),
        "--io-timeout",
        "1",
    ]);
    for (r, mb) in [("R1", 1), ("R2", 2)] {
        t(&[
            "resource",
            "init",
            &format!("LS:{r}:{p1}:{mb}M"),
            "--num-hosts",
            "8",
        ]);
    }
    let sl = SanlockDaemon::start();
    // Host 1 (sanlock): join and hold R1 in a process that sanlock will have to kill.
    let mut holder = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(format!(
            r#"
import sanlock, time
sanlock.add_lockspace(b"LS", 1, b"{p1}", iotimeout=1)
fd = sanlock.register()
sanlock.acquire(b"LS", b"R1", [(b"{p1}", 1048576)], slkfd=fd)
print("held", flush=True)
time.sleep(120)
"#
        ))
        .env("SANLOCK_RUN_DIR", sl.rundir())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "held");
    // Host 2 (tenured).
    let h2 = Daemon::start(false, Some(format!("LS:2:{p2}:0")));
    let t0 = Instant::now();
    loop {
        let out = h2.tenure(&["lockspace", "list", "--json"]);
        if String::from_utf8_lossy(&out.stdout).contains("\"joined\"") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "{}", h2.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(3));
    // tenure → sanlock.
    let out = h2.tenure(&["resource", "request", "--force", &format!("LS:R1:{p2}:1M")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = holder.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "sanlock did not kill its holder"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    let to_sanlock = t0.elapsed();
    // sanlock → tenure: host 2 holds R2; a FORCE request from host 1 kills its holder.
    let mut held = Command::new(tenure_bin())
        .arg("--socket")
        .arg(h2.socket())
        .args([
            "run",
            "--lease",
            &format!("LS:R2:{p2}:2M"),
            "--",
            "sleep",
            "120",
        ])
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !String::from_utf8_lossy(&h2.tenure(&["status", "--json"]).stdout).contains("\"R2\"") {
        assert!(t0.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(100));
    }
    sl.python(&format!(
        r#"
import sanlock
sanlock.request(b"LS", b"R2", [(b"{p1}", 2 * 1048576)], action=sanlock.REQ_FORCE)
"#
    ));
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = held.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "tenured did not kill its holder\n{}",
            h2.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    eprintln!(
        "tenure → sanlock request honoured in {to_sanlock:?}; sanlock → tenure in {:?}",
        t0.elapsed()
    );
    let _ = sl.python(&format!(
        r#"
import sanlock
sanlock.rem_lockspace(b"LS", 1, b"{p1}")
"#
    ));
}

/// An event listener: registers, says so, waits up to 30 s for events, prints them as JSON.
const EVENT_LISTENER: &str = r#"
import sanlock, select, json, time
fd = sanlock.reg_event(b"LS")
print("registered", flush=True)
evs = []
end = time.time() + 30
while not evs and time.time() < end:
    r, _, _ = select.select([fd], [], [], 1)
    if r:
        evs = sanlock.get_event(fd)
sanlock.end_event(fd, b"LS")
print(json.dumps(evs), flush=True)
"#;

fn listen(rundir: &std::path::Path) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut c = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(EVENT_LISTENER)
        .env("SANLOCK_RUN_DIR", rundir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(c.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "registered");
    (c, out)
}

fn events_of(mut c: Child, mut out: BufReader<std::process::ChildStdout>) -> serde_json::Value {
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(c.wait().unwrap().success());
    serde_json::from_str(line.trim()).unwrap()
}

/// Host events (REG_EVENT / SET_EVENT / END_EVENT and the delta-lease carriage) cross between
/// the real sanlock daemon (host 1) and tenured (host 2), both ways, each driven through
/// python3-sanlock.
#[test]
fn host_events_cross_between_sanlock_and_tenured() {
    if !prerequisite(is_root(), "root") || !sanlock_available() {
        return;
    }
    let _serial = sanlock_lock();
    let backing = BackingFile::new(16 << 20);
    let d1 = LoopDevice::attach(backing.path(), 512);
    let d2 = LoopDevice::attach(backing.path(), 512);
    let (p1, p2) = (d1.path_str(), d2.path_str());
    let out = Command::new(tenure_bin())
        .args([
            "lockspace",
            "init",
            &format!("LS:0:{p1}:0"),
            "--io-timeout",
            "1",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let sl = SanlockDaemon::start();
    sl.python(&format!(
        "import sanlock\nsanlock.add_lockspace(b\"LS\", 1, b\"{p1}\", iotimeout=1)\n"
    ));
    let h2 = Daemon::start(true, Some(format!("LS:2:{p2}:0")));
    let t0 = Instant::now();
    loop {
        let out = h2.tenure(&["lockspace", "list", "--json"]);
        if String::from_utf8_lossy(&out.stdout).contains("\"joined\"") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "{}", h2.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    // Both see each other renew.
    std::thread::sleep(Duration::from_secs(4));
    let t = python;
    // Refusals on tenured's side.
    let refusals = finish(
        t(
            &h2,
            r#"
import sanlock
for f in (lambda: sanlock.reg_event(b"NOPE"),
          lambda: sanlock.set_event(b"LS", 0, 0, 1),
          lambda: sanlock.set_event(b"NOPE", 1, 0, 1)):
    try:
        f()
        print("ok")
    except sanlock.SanlockException as e:
        print(e.errno)
"#,
        ),
        "refusals",
        &h2,
    );
    assert_eq!(
        refusals.split_whitespace().collect::<Vec<_>>(),
        ["2", "22", "2"]
    );

    // sanlock (host 1) → tenured (host 2).
    let (c, out) = listen(&h2.sanlock_dir());
    let sent = Instant::now();
    sl.python(
        "import sanlock\nsanlock.set_event(b\"LS\", 2, 0, 0x55, data=0x66, flags=sanlock.SETEV_CUR_GENERATION)\n",
    );
    let evs = events_of(c, out);
    let to_tenured = sent.elapsed();
    let e = &evs[0];
    assert_eq!(
        (&e["from_host_id"], &e["host_id"], &e["event"], &e["data"]),
        (&1.into(), &2.into(), &0x55.into(), &0x66.into()),
        "{evs}\n{}",
        h2.log()
    );
    assert!(
        e["generation"].as_u64().unwrap() >= 1,
        "CUR_GENERATION filled in: {e}"
    );

    // tenured (host 2) → sanlock (host 1), then a different event within 6T is busy.
    let (c, out) = listen(sl.rundir());
    let sent = Instant::now();
    let busy = finish(
        t(
            &h2,
            r#"
import sanlock
sanlock.set_event(b"LS", 1, 0, 0x77, data=0x88, flags=sanlock.SETEV_CUR_GENERATION)
sanlock.set_event(b"LS", 1, 0, 0x77, data=0x88, flags=sanlock.SETEV_CUR_GENERATION)
try:
    sanlock.set_event(b"LS", 1, 0, 0x79, data=1)
    print("ok")
except sanlock.SanlockException as e:
    print(e.errno)
"#,
        ),
        "set_event",
        &h2,
    );
    assert_eq!(busy.trim(), "16", "a different event within 6T: EBUSY");
    let evs = events_of(c, out);
    let to_sanlock = sent.elapsed();
    let e = &evs[0];
    assert_eq!(
        (&e["from_host_id"], &e["host_id"], &e["event"], &e["data"]),
        (&2.into(), &1.into(), &0x77.into(), &0x88.into()),
        "{evs}\n{}",
        h2.log()
    );
    assert!(e["from_generation"].as_u64().unwrap() >= 1, "{e}");
    assert!(e["generation"].as_u64().unwrap() >= 1, "{e}");
    eprintln!(
        "host event sanlock → tenured in {to_tenured:?}; tenured → sanlock in {to_sanlock:?}"
    );
    let _ = sl.python(&format!(
        "import sanlock\nsanlock.rem_lockspace(b\"LS\", 1, b\"{p1}\")\n"
    ));
}

/// The resource index commands through `sanlock client` (format, create, lookup, delete,
/// update, rebuild), run the same way against the real sanlock daemon and against tenured on
/// two devices: the same outputs, and the same index bytes and lease leaders on disk.
#[test]
fn rindex_commands_match_sanlock() {
    if !prerequisite(is_root(), "root") || !sanlock_available() {
        return;
    }
    let _serial = sanlock_lock();
    let b1 = BackingFile::new(16 << 20);
    let b2 = BackingFile::new(16 << 20);
    let d1 = LoopDevice::attach(b1.path(), 512);
    let d2 = LoopDevice::attach(b2.path(), 512);
    let sl = SanlockDaemon::start();
    let td = Daemon::start(true, None);
    // Runs a sanlock client command against one daemon; returns its exit code and stdout.
    let run = |rundir: &std::path::Path, args: &[&str]| -> (i32, String) {
        let out = Command::new("timeout")
            .arg("30")
            .arg("sanlock")
            .args(args)
            .env("SANLOCK_RUN_DIR", rundir)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let mut transcripts = Vec::new();
    for (rundir, dev) in [(sl.rundir().to_owned(), &d1), (td.sanlock_dir(), &d2)] {
        let p = dev.path_str();
        let x = format!("LS:{p}:1048576");
        let mut t = Vec::new();
        for args in [
            vec!["direct", "init", "-s", &format!("LS:0:{p}:0"), "-o", "1"],
            vec![
                "client",
                "add_lockspace",
                "-s",
                &format!("LS:1:{p}:0"),
                "-o",
                "1",
            ],
            vec!["client", "create", "-x", &x, "-e", "early"],
            vec!["client", "format", "-x", &x],
            vec!["client", "create", "-x", &x, "-e", "r1"],
            vec!["client", "create", "-x", &x, "-e", "r2"],
            vec!["client", "create", "-x", &x, "-e", "r3"],
            vec!["client", "lookup", "-x", &x, "-e", "r2"],
            vec!["client", "lookup", "-x", &x, "-e", "r2:3145728"],
            vec!["client", "lookup", "-x", &x, "-e", "nope"],
            vec!["client", "lookup", "-x", &x],
            vec!["client", "delete", "-x", &x, "-e", "r1"],
            vec!["client", "delete", "-x", &x, "-e", "r1"],
            vec!["client", "lookup", "-x", &x],
            vec!["client", "update", "-x", &x, "-e", "r3:5242880", "-z", "1"],
            vec!["client", "update", "-x", &x, "-e", "r3:5242881", "-z", "1"],
            vec!["client", "lookup", "-x", &x, "-e", "r3"],
            vec!["client", "rebuild", "-x", &x],
            vec!["client", "lookup", "-x", &x, "-e", "r3"],
            vec!["client", "create", "-x", "OTHER:{p}:1048576", "-e", "z"],
            vec!["client", "rem_lockspace", "-s", &format!("LS:1:{p}:0")],
        ] {
            let args: Vec<String> = args.iter().map(|a| a.replace("{p}", &p)).collect();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (code, out) = run(&rundir, &args);
            t.push(format!("{args:?} -> {code}: {out}").replace(&p, "DEV"));
        }
        transcripts.push(t);
    }
    for (a, b) in transcripts[0].iter().zip(&transcripts[1]) {
        assert_eq!(
            a,
            b,
            "sanlock vs tenured\n--- sanlock ---\n{}\n--- tenured ---\n{}\n--- tenured log ---\n{}",
            transcripts[0].join(""),
            transcripts[1].join(""),
            td.log()
        );
    }
    eprintln!("{}", transcripts[1].join("\n"));
    // Same bytes: the whole index area, and each lease slot's leader (the cleared one too),
    // apart from the fields that record when and by whom it was written.
    let read = |dev: &LoopDevice, offset: u64, len: usize| -> Vec<u8> {
        let mut f = std::fs::File::open(dev.path_str()).unwrap();
        use std::io::Seek;
        f.seek(std::io::SeekFrom::Start(offset)).unwrap();
        let mut b = vec![0u8; len];
        f.read_exact(&mut b).unwrap();
        b
    };
    assert_eq!(
        read(&d1, 1 << 20, 1 << 20),
        read(&d2, 1 << 20, 1 << 20),
        "index areas differ"
    );
    for slot in 3..6u64 {
        let mask = |mut s: Vec<u8>| {
            s[168..172].fill(0); // checksum
            s[176..200].fill(0); // write_id / write_generation / write_timestamp
            s
        };
        assert_eq!(
            mask(read(&d1, slot << 20, 512)),
            mask(read(&d2, slot << 20, 512)),
            "lease slot at {slot} MiB differs"
        );
    }
}

/// `sanlock client shutdown -f 1 -w 1` with a lockspace joined and a lease held: the holder is
/// SIGKILLed, the lockspace left, the reply comes when tenured exits (0), and it exits. Not
/// forced, the same is refused (-16) first.
#[test]
fn forced_shutdown_kills_holders_leaves_and_exits() {
    if !prerequisite(is_root(), "root") || !sanlock_available() {
        return;
    }
    let backing = BackingFile::new(16 << 20);
    let dev = LoopDevice::attach(backing.path(), 512);
    let p = dev.path_str();
    for args in [
        vec![
            "lockspace",
            "init",
            &format!("LS:0:{p}:0"),
            "--io-timeout",
            "1",
        ],
        vec![
            "resource",
            "init",
            &format!("LS:R1:{p}:1M"),
            "--num-hosts",
            "8",
        ],
    ] {
        let out = Command::new(tenure_bin()).args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
    }
    let mut d = Daemon::start(true, Some(format!("LS:1:{p}:0")));
    let client = |args: &[&str]| -> String {
        let out = Command::new("timeout")
            .arg("30")
            .arg("sanlock")
            .arg("client")
            .args(args)
            .env("SANLOCK_RUN_DIR", d.sanlock_dir())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let t0 = Instant::now();
    while !client(&["inq_lockspace", "-s", &format!("LS:1:{p}:0")]).contains("done 0") {
        assert!(t0.elapsed() < Duration::from_secs(20), "{}", d.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let res = format!("LS:R1:{p}:1048576");
    let mut holder = Command::new("sanlock")
        .args(["client", "command", "-r", &res, "-c", "/bin/sleep", "60"])
        .env("SANLOCK_RUN_DIR", d.sanlock_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !client(&["status"]).contains(&format!("r {res}:")) {
        assert!(t0.elapsed() < Duration::from_secs(10), "{}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(client(&["shutdown", "-f", "0", "-w", "1"]).contains("done -16"));
    let out = client(&["shutdown", "-f", "1", "-w", "1"]);
    assert!(out.contains("shutdown done 0"), "{out}\n{}", d.log());
    use std::os::unix::process::ExitStatusExt;
    let st = holder.wait().unwrap();
    assert_eq!(st.signal(), Some(libc::SIGKILL), "{st:?}");
    let t0 = Instant::now();
    let exit = loop {
        if let Some(s) = d.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "tenured did not exit"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit:?}\n{}", d.log());
    assert!(d.log().contains("left"), "{}", d.log());
}

/// The differential harness (tests/fixtures/sanlock_diff.py): every command × its flags ×
/// edge inputs, sent to a real sanlock 3.8.5 and to tenured on identical devices (each on
/// a FUSE file whose writes the harness can hang, so a removal lasts long enough to be seen);
/// results, reply fields and the masked on-disk bytes of every area must be the same. The
/// deliberate differences it masks are listed in docs/sanlock-compat.md.
#[test]
fn differential_harness_finds_no_difference_from_sanlock() {
    if !prerequisite(is_root(), "root") || !sanlock_available() || !tenure_tests::fuse_available() {
        return;
    }
    let _serial = sanlock_lock();
    let fs1 = tenure_tests::StallFs::start(64 << 20);
    let fs2 = tenure_tests::StallFs::start(64 << 20);
    let d1 = LoopDevice::attach(&fs1.lun(), 512);
    let d2 = LoopDevice::attach(&fs2.lun(), 512);
    let sl = SanlockDaemon::start();
    let td = Daemon::start(true, None);
    let script = tenure_tests::workspace_root().join("tests/fixtures/sanlock_diff.py");
    let run = |rundir: PathBuf, dev: String, control: PathBuf| {
        let script = script.clone();
        std::thread::spawn(move || {
            let out = Command::new("timeout")
                .arg("600")
                .arg("/usr/bin/python3")
                .arg(&script)
                .arg(&dev)
                .arg(&control)
                .env("SANLOCK_RUN_DIR", &rundir)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).replace(&dev, "DEV");
            (
                out.status.code(),
                text,
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
    };
    // Both at once: the harness's waits (joins, renewals) overlap.
    let a = run(sl.rundir().to_owned(), d1.path_str(), fs1.control_dir());
    let b = run(td.sanlock_dir(), d2.path_str(), fs2.control_dir());
    let (ca, ta, ea) = a.join().unwrap();
    let (cb, tb, eb) = b.join().unwrap();
    assert_eq!(ca, Some(0), "harness against sanlock failed:\n{ta}\n{ea}");
    assert_eq!(cb, Some(0), "harness against tenured failed:\n{tb}\n{eb}");
    let la: Vec<&str> = ta.lines().collect();
    let lb: Vec<&str> = tb.lines().collect();
    let steps = la.len();
    assert!(steps > 200, "the harness ran too few steps:\n{ta}");
    let mut diffs = Vec::new();
    for i in 0..la.len().max(lb.len()) {
        let (x, y) = (la.get(i).copied(), lb.get(i).copied());
        if x != y {
            diffs.push(format!(
                "  sanlock: {}\n  tenured: {}",
                x.unwrap_or("(none)"),
                y.unwrap_or("(none)")
            ));
        }
    }
    assert!(
        diffs.is_empty(),
        "{} of {steps} steps differ:\n{}\n--- tenured log ---\n{}",
        diffs.len(),
        diffs.join("\n"),
        td.log()
    );
    eprintln!("differential harness: {steps} steps, no difference");
}

/// lvmlockd's use of sanlock for a shared VG (issue 17), through Debian's libsanlock: the
/// program `tests/fixtures/lvmlockd_seq.c` (lockspace, USED_BY_ORPHANS, the global and VG
/// locks shared and converted with their LVBs, persistent LV locks in both modes, a restart
/// leaving orphans, adoption with ACQUIRE_ORPHAN and ORPHAN_ONLY, REL_ORPHAN, lockstop) run
/// against the real sanlock daemon and against tenured, each on its own device: every line
/// must be the same.
#[test]
fn lvmlockd_sequence_through_libsanlock_gives_sanlocks_results() {
    if !prerequisite(is_root(), "root") || !sanlock_available() {
        return;
    }
    let Some(bin) = tenure_tests::lvmlockd_seq_bin() else {
        return;
    };
    let _serial = sanlock_lock();
    let b1 = BackingFile::new(16 << 20);
    let b2 = BackingFile::new(16 << 20);
    let d1 = LoopDevice::attach(b1.path(), 512);
    let d2 = LoopDevice::attach(b2.path(), 512);
    let sl = SanlockDaemon::start();
    let td = Daemon::start(true, None);
    let run = |rundir: PathBuf, dev: String| {
        let bin = bin.clone();
        std::thread::spawn(move || {
            let out = Command::new("timeout")
                .arg("300")
                .arg(&bin)
                .arg(&dev)
                .env("SANLOCK_RUN_DIR", &rundir)
                .output()
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
    };
    let a = run(sl.rundir().to_owned(), d1.path_str());
    let b = run(td.sanlock_dir(), d2.path_str());
    let (ca, ta, ea) = a.join().unwrap();
    let (cb, tb, eb) = b.join().unwrap();
    assert_eq!(ca, Some(0), "against sanlock:\n{ta}\n{ea}");
    assert_eq!(cb, Some(0), "against tenured:\n{tb}\n{eb}\n{}", td.log());
    // The sequence did what lvmlockd relies on (against sanlock; tenured must match it).
    for line in [
        "B acquire lv1 without ORPHAN: -117",
        "B acquire lv1 exclusive ORPHAN (adopts): 0",
        "B GLLK lvb: 0 \"gl-version-2\"",
        "C REL_ORPHAN lv2: 1",
        "inq lockspace: -2",
    ] {
        assert!(
            ta.lines().any(|l| l == line),
            "sanlock: no {line:?} in\n{ta}"
        );
    }
    let diffs: Vec<String> = ta
        .lines()
        .zip(tb.lines())
        .filter(|(x, y)| x != y)
        .map(|(x, y)| format!("  sanlock: {x}\n  tenured: {y}"))
        .collect();
    assert!(
        diffs.is_empty() && ta.lines().count() == tb.lines().count(),
        "lvmlockd's sequence differs:\n{}\n--- tenured log ---\n{}",
        diffs.join("\n"),
        td.log()
    );
    eprintln!(
        "lvmlockd sequence: {} steps, the same against sanlock and tenured",
        ta.lines().count()
    );
}

/// tenured started on a sanlock run directory whose socket another daemon serves refuses to
/// start and names that daemon: the real sanlock (issue 17: it said "another tenured is
/// running"), or another tenured.
#[test]
fn a_sanlock_socket_owned_by_another_daemon_is_named_in_the_refusal() {
    if !prerequisite(is_root(), "root") || !sanlock_available() {
        return;
    }
    let _serial = sanlock_lock();
    let start_on = |rundir: &std::path::Path| {
        let dir = tempfile::Builder::new()
            .prefix("tenured-owner-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let d = dir.path();
        let out = Command::new("timeout")
            .arg("30")
            .arg(tenured_bin())
            .args(["--config", "/dev/null", "--run-dir"])
            .arg(d.join("run"))
            .arg("--state-dir")
            .arg(d.join("state"))
            .args([
                "--watchdog",
                "none",
                "--sanlock-compat",
                "--sanlock-run-dir",
            ])
            .arg(rundir)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let sl = SanlockDaemon::start();
    let (code, err) = start_on(sl.rundir());
    assert_ne!(code, Some(0), "tenured started on sanlock's socket: {err}");
    assert!(
        err.contains("the real sanlock daemon owns it") && !err.contains("another tenured"),
        "the refusal names the real sanlock: {err}"
    );
    // sanlock still serves its socket.
    let v = Command::new("sanlock")
        .args(["client", "version"])
        .env("SANLOCK_RUN_DIR", sl.rundir())
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    drop(sl);
    let td = Daemon::start(true, None);
    let (code, err) = start_on(&td.sanlock_dir());
    assert_ne!(
        code,
        Some(0),
        "a second tenured started on the first's socket: {err}"
    );
    assert!(err.contains("another tenured is running"), "{err}");
}

/// A lease on three disks through both sockets (issue 17): `tenure run --lease
/// LS:R:P1:O1:P2:O2:P3:O3` and python3-sanlock's acquire with three disks. With one disk
/// failing (FUSE: every I/O answered EIO, then its writes hanging) the lease is still taken on
/// the other two, a majority; with two failing it is refused, and nothing is left held.
#[test]
fn a_lease_on_three_disks_is_taken_through_both_sockets_while_one_fails() {
    if !prerequisite(is_root(), "root") || !sanlock_available() || !tenure_tests::fuse_available() {
        return;
    }
    let ls_file = BackingFile::new(16 << 20);
    let ls_dev = LoopDevice::attach(ls_file.path(), 512);
    let fs: Vec<tenure_tests::StallFs> = (0..3)
        .map(|_| tenure_tests::StallFs::start(16 << 20))
        .collect();
    let devs: Vec<LoopDevice> = fs
        .iter()
        .map(|f| LoopDevice::attach(&f.lun(), 512))
        .collect();
    let paths: Vec<String> = devs.iter().map(LoopDevice::path_str).collect();
    let spec = format!("LS:R:{}:1M:{}:1M:{}:1M", paths[0], paths[1], paths[2]);
    let t = tenure_ok;
    let lsp = ls_dev.path_str();
    t(&[
        "lockspace",
        "init",
        &format!("LS:0:{lsp}:0"),
        "--io-timeout",
        "1",
    ]);
    t(&["resource", "init", &spec, "--num-hosts", "8"]);
    let d = Daemon::start(true, Some(format!("LS:1:{lsp}:0")));
    let t0 = Instant::now();
    loop {
        let out = d.tenure(&["lockspace", "list", "--json"]);
        if String::from_utf8_lossy(&out.stdout).contains("\"joined\"") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "{}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let control = |i: usize, what: &str, on: bool| {
        let p = fs[i].control_dir().join(what);
        if on {
            std::fs::write(&p, b"").unwrap();
        } else {
            let _ = std::fs::remove_file(&p);
        }
    };
    // Native: `tenure run` holds the lease while its command runs and prints its state.
    let run = |what: &str| {
        let out = d.tenure(&["run", "--lease", &spec, "--", "sh", "-c", "echo held"]);
        (
            out.status.success(),
            format!(
                "{what}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    // sanlock: python3-sanlock with three disks; prints inquire's state string.
    let disks = format!(
        "[(b\"{}\", 1048576), (b\"{}\", 1048576), (b\"{}\", 1048576)]",
        paths[0], paths[1], paths[2]
    );
    let py = |expect_ok: bool| {
        let script = format!(
            r#"
import sanlock, time
fd = sanlock.register()
deadline = time.monotonic() + 20
while True:
    try:
        sanlock.acquire(b"LS", b"R", {disks}, slkfd=fd)
        break
    except sanlock.SanlockException as e:
        # EAGAIN: the previous holder's release (`tenure run` exits before it is done, and
        # with a failing disk it takes longer on a loaded machine) is still in flight
        if e.errno == 11 and time.monotonic() < deadline:
            time.sleep(0.1)
            continue
        if {expect_ok}:
            raise
        print("refused", e.errno)
        raise SystemExit(0)
if not {expect_ok}:
    raise SystemExit("acquired with two of three disks failing")
state = sanlock.inquire(slkfd=fd)
print("held", state)
sanlock.release(b"LS", b"R", {disks}, slkfd=fd)
"#,
            expect_ok = if expect_ok { "True" } else { "False" }
        );
        finish(python(&d, &script), "python3-sanlock on three disks", &d)
    };
    let (ok, out) = run("all disks healthy");
    assert!(ok && out.contains("held"), "{out}\n{}", d.log());
    let held = py(true);
    assert!(
        held.contains(&paths[0]) && held.contains(&paths[2]),
        "inquire names every disk: {held}"
    );
    // One disk answers EIO to everything.
    control(1, "eio_reads", true);
    control(1, "eio_writes", true);
    let (ok, out) = run("disk 2 failing (EIO)");
    assert!(ok && out.contains("held"), "{out}\n{}", d.log());
    py(true);
    // Its writes hang instead (reads work): the writes time out, the majority decides.
    control(1, "eio_reads", false);
    control(1, "eio_writes", false);
    control(1, "hang_writes", true);
    let (ok, out) = run("disk 2 hanging");
    assert!(ok && out.contains("held"), "{out}\n{}", d.log());
    // Its release writes time out on disk 2 too: let it end before failing a second disk.
    let idle = || {
        let status = d.tenure(&["status", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap_or_default();
        v["leases"].as_array().is_some_and(Vec::is_empty)
            && v["resources_in_flight"]
                .as_array()
                .is_some_and(Vec::is_empty)
    };
    let t0 = Instant::now();
    while !idle() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "release did not end: {}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    control(1, "hang_writes", false);
    // Two of three failing: no majority, refused.
    for i in [1, 2] {
        control(i, "eio_reads", true);
        control(i, "eio_writes", true);
    }
    let (ok, out) = run("disks 2 and 3 failing");
    assert!(
        !ok && !out.contains("held"),
        "acquired without a majority: {out}"
    );
    let refused = py(false);
    assert!(refused.starts_with("refused"), "{refused}");
    for i in [1, 2] {
        control(i, "eio_reads", false);
        control(i, "eio_writes", false);
    }
    // Healthy again: nothing was left held, the lease is taken at once.
    let (ok, out) = run("healthy again");
    assert!(ok && out.contains("held"), "{out}\n{}", d.log());
    let status = d.tenure(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["leases"].as_array().map(Vec::len), Some(0), "{v}");
}

/// Issue 18: a python3-sanlock client registered and holding a lease keeps both through
/// `tenure daemon upgrade`: after the upgrade, on the same registered connection, inquire
/// names its lease and release frees it; a native client's connection goes on too.
#[test]
fn python3_sanlock_clients_keep_registration_and_leases_through_an_upgrade() {
    if !prerequisite(is_root(), "root") || !sanlock_available() {
        return;
    }
    let backing = BackingFile::new(16 << 20);
    let d1 = LoopDevice::attach(backing.path(), 512);
    let p1 = d1.path_str();
    let t = tenure_ok;
    t(&[
        "lockspace",
        "init",
        &format!("LS:0:{p1}:0"),
        "--io-timeout",
        "1",
    ]);
    t(&[
        "resource",
        "init",
        &format!("LS:R1:{p1}:1M"),
        "--num-hosts",
        "8",
    ]);
    let h1 = Daemon::start(true, Some(format!("LS:1:{p1}:0")));
    let t0 = Instant::now();
    loop {
        let out = h1.tenure(&["lockspace", "list", "--json"]);
        if String::from_utf8_lossy(&out.stdout).contains("\"joined\"") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "{}", h1.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let script = format!(
        r#"
import sanlock, sys
fd = sanlock.register()
sanlock.acquire(b"LS", b"R1", [(b"{p1}", 1048576)], slkfd=fd)
print("held", flush=True)
assert sys.stdin.readline().strip() == "go"
held = sanlock.inquire(slkfd=fd)
assert [r["resource"] for r in held] == [b"R1"], held
sanlock.release(b"LS", b"R1", [(b"{p1}", 1048576)], slkfd=fd)
assert sanlock.inquire(slkfd=fd) == [], "released"
print("released", flush=True)
"#
    );
    let mut py = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(&script)
        .env("SANLOCK_RUN_DIR", h1.sanlock_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(py.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "held", "{}", h1.log());
    let status = |h: &Daemon| -> serde_json::Value {
        let o = h.tenure(&["status", "--json"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let before = status(&h1);
    assert_eq!(before["leases"][0]["resource"], "R1", "{before}");
    let bin_dir = tempfile::tempdir().unwrap();
    let second = bin_dir.path().join("tenured-second");
    std::fs::copy(tenured_bin(), &second).unwrap();
    let o = Command::new(tenure_bin())
        .arg("--socket")
        .arg(h1.socket())
        .args(["daemon", "upgrade", "--binary"])
        .arg(&second)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stderr),
        h1.log()
    );
    let after = status(&h1);
    assert_ne!(after["pid"], before["pid"], "a new process serves: {after}");
    assert_eq!(
        after["leases"][0]["lver"], before["leases"][0]["lver"],
        "{after}"
    );
    assert_eq!(after["leases"][0]["owner"], "connection", "{after}");
    // The registered connection goes on in the new process.
    py.stdin.take().unwrap().write_all(b"go\n").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    let mut err = String::new();
    py.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(line.trim(), "released", "{err}\n{}", h1.log());
    assert!(py.wait().unwrap().success(), "{err}");
    let last = status(&h1);
    assert!(
        last["leases"].as_array().is_some_and(|l| l.is_empty()),
        "{last}"
    );
}

/// Issue 20: `tenure cluster` on areas where a sanlock host and a tenured host hold leases at
/// once: both hosts live with their names and generations, each lease with its owner's host id
/// and name, as the two daemons report them.
#[test]
fn tenure_cluster_shows_sanlock_and_tenured_hosts_and_their_leases() {
    if !prerequisite(is_root(), "root") || !sanlock_available() {
        return;
    }
    let _serial = sanlock_lock();
    let backing = BackingFile::new(16 << 20);
    let d1 = LoopDevice::attach(backing.path(), 512);
    let d2 = LoopDevice::attach(backing.path(), 512);
    let (p1, p2) = (d1.path_str(), d2.path_str());
    let t = tenure_ok;
    t(&[
        "lockspace",
        "init",
        &format!("LS:0:{p1}:0"),
        "--io-timeout",
        "1",
    ]);
    for (r, mb) in [("R1", 1), ("R2", 2), ("R3", 3)] {
        t(&[
            "resource",
            "init",
            &format!("LS:{r}:{p1}:{mb}M"),
            "--num-hosts",
            "8",
        ]);
    }
    let sl = SanlockDaemon::start();
    let mut holder = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(format!(
            r#"
import sanlock, time
sanlock.add_lockspace(b"LS", 1, b"{p1}", iotimeout=1)
fd = sanlock.register()
sanlock.acquire(b"LS", b"R1", [(b"{p1}", 1048576)], slkfd=fd)
print("held", flush=True)
time.sleep(120)
"#
        ))
        .env("SANLOCK_RUN_DIR", sl.rundir())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "held");
    let h2 = Daemon::start(false, Some(format!("LS:2:{p2}:0")));
    let t0 = Instant::now();
    loop {
        let out = h2.tenure(&["lockspace", "list", "--json"]);
        if String::from_utf8_lossy(&out.stdout).contains("\"joined\"") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "{}", h2.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut holder2 = Command::new(tenure_bin())
        .arg("--socket")
        .arg(h2.socket())
        .args([
            "run",
            "--lease",
            &format!("LS:R2:{p2}:2M"),
            "--",
            "sleep",
            "120",
        ])
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !String::from_utf8_lossy(&h2.tenure(&["status", "--json"]).stdout).contains("\"R2\"") {
        assert!(t0.elapsed() < Duration::from_secs(20), "{}", h2.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = Command::new(tenure_bin())
        .args(["cluster", &format!("{p2}:0"), "--wait", "3", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let host = |id: u64| {
        v["hosts"]
            .as_array()
            .and_then(|a| a.iter().find(|h| h["host_id"] == id))
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(host(1)["status"], "live", "{v}");
    assert_eq!(host(2)["status"], "live", "{v}");
    let lease = |r: &str| {
        v["leases"]
            .as_array()
            .and_then(|a| a.iter().find(|l| l["resource"] == r))
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(lease("R1")["mode"], "exclusive", "{v}");
    assert_eq!(lease("R1")["owner"][0], 1, "{v}");
    assert_eq!(
        lease("R1")["owner"][2],
        host(1)["name"],
        "the sanlock host's name: {v}"
    );
    assert_eq!(lease("R2")["owner"][0], 2, "{v}");
    assert_eq!(lease("R2")["owner"][1], host(2)["generation"], "{v}");
    assert_eq!(lease("R3")["mode"], "free", "{v}");
    // The table names them too.
    let out = Command::new(tenure_bin())
        .args(["cluster", &format!("{p2}:0"), "--wait", "2"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("R1") && text.contains("R2") && text.contains("live"),
        "{text}"
    );
    let _ = holder2.kill();
    let _ = holder2.wait();
    let _ = holder.kill();
    let _ = holder.wait();
}
