//! Unmodified libvirt (Debian's libvirtd 9.0 with its sanlock lock driver) and real QEMU/KVM
//! guests against tenured's sanlock-compatible socket: the plans of
//! tests/fixtures/libvirt-sanlock.sh (A and B: a second VM on the same disk is refused, by
//! QEMU's image lock and then by the lease; C: kill path, suspend/resume releasing and
//! re-acquiring, libvirtd restart; D: a lease held by host 2 — a second tenured — refuses the VM
//! with −243 until host 2 releases it; E, issue 18: a guest runs on through `tenure daemon
//! upgrade` and through a SIGKILL + restart of tenured, its leases unchanged, host 2 seeing
//! host 1 live in the same generation, the emulated watchdog never firing, and `virsh
//! destroy` releasing the leases; F, issue 22: libvirtd failure — libvirtd stopped and the
//! guest's /run/libvirt/qemu records deleted, so its QEMU runs on as an orphan unknown to
//! libvirt: starting the guest again is refused — first by virtlogd, which still writes the
//! orphan's log, then, with QEMU logging to its file itself, by the lease the orphan holds — and
//! succeeds once the orphan is killed; G, issue 22: disk hot-plug — `virsh attach-disk` to a
//! running guest takes the disk's lease for its QEMU pid, a second guest's attach is refused
//! while the lease is held, by the first guest or by host 2, and `detach-disk` releases it; H, issue 22: two libvirt hosts, each in its own
//! network, mount and UTS namespaces with its own tenured (host 1 this test's, host 2 another),
//! sharing images and leases: `virsh migrate --live` there and back, both daemons sampled
//! throughout and never both holding the shared disk's lease, and a third tenured taking the lease
//! between a `--suspend` migration and the resume, which is then refused). The script installs libvirt and QEMU (apt) and cleans up
//! what it started.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tenure_tests::{is_root, prerequisite, tenure_bin, tenured_bin, workspace_root};

#[test]
fn libvirt_plans_a_to_h_pass_against_tenured() {
    if !prerequisite(is_root(), "root")
        || !prerequisite(
            std::path::Path::new("/usr/bin/apt-get").exists(),
            "apt-get (the recipe installs libvirt and QEMU)",
        )
    {
        return;
    }
    // TENURE_KEEP_LIBVIRT_WORK=1 keeps the logs, XML and lease dumps for a look afterwards.
    let keep = std::env::var_os("TENURE_KEEP_LIBVIRT_WORK").is_some();
    let work = tempfile::Builder::new()
        .prefix("tenure-libvirt-")
        .disable_cleanup(keep)
        .tempdir_in("/var/tmp")
        .unwrap();
    if keep {
        eprintln!("keeping {}", work.path().display());
    }
    let rundir = format!("/run/sanlock-tenure-test-{}", std::process::id());
    let w = work.path();
    // Host 1: tenured in the process group of a placeholder leader, which its emulated
    // watchdog kills when it fires (plan E checks that it never does).
    let leader = Command::new("sleep")
        .arg("7200")
        .process_group(0)
        .spawn()
        .unwrap();
    let pgid = leader.id() as i32;
    struct Kill(i32, std::process::Child, std::process::Child, String);
    impl Drop for Kill {
        fn drop(&mut self) {
            // The emulator first (it must not fire at the test bed), then host 1's group.
            let _ = self.1.kill();
            let _ = self.1.wait();
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(self.0),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = self.2.wait();
            // Host 1's sanlock run dir, once its tenured is gone.
            let _ = std::fs::remove_dir_all(&self.3);
        }
    }
    let emulator = Command::new(tenure_bin())
        .args(["watchdog", "emulate", "--socket"])
        .arg(w.join("wd.sock"))
        .args(["--kill-pgid", &pgid.to_string(), "--record"])
        .arg(w.join("fired.log"))
        .arg("--clear-on-fire")
        .arg(w.join("run/watchdog-armed"))
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(w.join("emulator.log")).unwrap())
        .spawn()
        .unwrap();
    let _kill = Kill(pgid, emulator, leader, rundir.clone());
    let t0 = Instant::now();
    while std::os::unix::net::UnixStream::connect(w.join("wd.sock")).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "emulator did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let args: Vec<String> = [
        "--config",
        "/dev/null",
        "--run-dir",
        &w.join("run").display().to_string(),
        "--state-dir",
        &w.join("state").display().to_string(),
        "--watchdog",
        "emulated",
        "--emulated-socket",
        &w.join("wd.sock").display().to_string(),
        "--fire-timeout",
        "20",
        "--other-hosts-fire-timeout",
        "20",
        "--io-timeout",
        "2",
        "--kill-grace",
        "2",
        "--sigkill-max",
        "2",
        "--sanlock-compat",
        "--sanlock-run-dir",
        &rundir,
    ]
    .iter()
    .map(|a| (*a).to_owned())
    .collect();
    let mut daemon = Command::new(tenured_bin())
        .env("TENURE_CAPTURE_DIR", tenure_tests::capture_dir())
        .args(&args)
        .process_group(pgid)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(w.join("tenured.log")).unwrap())
        .spawn()
        .unwrap();
    // Plan E's commands: an upgrade to a second build, and a SIGKILL + restart of whatever
    // tenured serves then (in host 1's group), 1 s later.
    let second = w.join("tenured-second");
    std::fs::copy(tenured_bin(), &second).unwrap();
    let sock = w.join("run/tenured.sock");
    let upgrade = format!(
        "'{}' --socket '{}' daemon upgrade --binary '{}'",
        tenure_bin().display(),
        sock.display(),
        second.display()
    );
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    let crash_script = w.join("crash-restart.sh");
    std::fs::write(
        &crash_script,
        format!(
            r#"set -eu
pid=$('{tenure}' --socket '{sock}' status --json | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')
kill -KILL "$pid"
while [ -e /proc/$pid ] && ! grep -q ') Z' /proc/$pid/stat; do sleep 0.05; done
sleep 1
/usr/bin/python3 -c 'import subprocess, sys; subprocess.Popen(sys.argv[3:], process_group=int(sys.argv[1]), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(sys.argv[2], "a"))' {pgid} '{log}' '{tenured}' {args}
for _ in $(seq 100); do
  '{tenure}' --socket '{sock}' status --json 2>/dev/null | /usr/bin/python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin).get("adopted") else 1)' 2>/dev/null && exit 0
  sleep 0.1
done
echo "the restarted tenured did not adopt" >&2; exit 1
"#,
            tenure = tenure_bin().display(),
            sock = sock.display(),
            log = w.join("tenured.log").display(),
            tenured = tenured_bin().display(),
            args = quoted.join(" "),
        ),
    )
    .unwrap();
    let sock = std::path::Path::new(&rundir).join("sanlock.sock");
    let t0 = Instant::now();
    while !sock.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "tenured did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = Command::new("bash")
        .arg(workspace_root().join("tests/fixtures/libvirt-sanlock.sh"))
        .env("DAEMON", "external")
        .env("SOCKMODE", "ns")
        .env("PRIV_RUNDIR", &rundir)
        .env("HOST2_TENURED", tenured_bin())
        .env("TENURE_BIN", tenure_bin())
        .env("PLAN_E_UPGRADE", &upgrade)
        .env("PLAN_E_CRASH", format!("bash '{}'", crash_script.display()))
        .env("PLAN_E_FIRED", w.join("fired.log"))
        .env("WORK", work.path().join("lv"))
        .env("HOST1_LOG", w.join("tenured.log"))
        .output()
        .unwrap();
    let results = std::fs::read_to_string(work.path().join("lv/results.txt")).unwrap_or_default();
    let timings = std::fs::read_to_string(work.path().join("lv/timings.txt")).unwrap_or_default();
    eprintln!("{timings}");
    let log = std::fs::read_to_string(work.path().join("tenured.log")).unwrap_or_default();
    eprintln!("{results}");
    assert!(
        out.status.success(),
        "recipe failed ({:?}):\n{results}\n--- stderr tail ---\n{}\n--- tenured ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n"),
        log.lines().rev().take(30).collect::<Vec<_>>().join("\n")
    );
    for plan in [
        "plan A", "plan B", "plan C", "plan D", "plan E", "plan F", "plan G", "plan H",
    ] {
        assert!(
            results
                .lines()
                .any(|l| l.starts_with(&format!("PASS {plan}"))),
            "{plan} did not pass:\n{results}"
        );
    }
    assert!(!results.contains("FAIL"), "{results}");
    let _ = daemon.kill();
    let _ = daemon.wait();
    let fired = std::fs::read_to_string(w.join("fired.log")).unwrap_or_default();
    assert!(fired.is_empty(), "the emulated watchdog fired: {fired}");
    let _ = std::fs::remove_dir_all(&rundir);
}
