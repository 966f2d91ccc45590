//! Unmodified libvirt (Debian's libvirtd 9.0 with its sanlock lock driver) and real QEMU/KVM
//! guests against tenured's sanlock-compatible socket: the plans of
//! tests/fixtures/libvirt-sanlock.sh (A and B: a second VM on the same disk is refused, by
//! QEMU's image lock and then by the lease; C: kill path, suspend/resume releasing and
//! re-acquiring, libvirtd restart; D: a lease held by host 2 — a second tenured — refuses the VM
//! with −243 until host 2 releases it). The script installs libvirt and QEMU (apt) and cleans
//! up what it started.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tenure_tests::{is_root, prerequisite, tenured_bin, workspace_root};

#[test]
fn libvirt_plans_a_to_d_pass_against_tenured() {
    if !prerequisite(is_root(), "root")
        || !prerequisite(
            std::path::Path::new("/usr/bin/apt-get").exists(),
            "apt-get (the recipe installs libvirt and QEMU)",
        )
    {
        return;
    }
    let work = tempfile::Builder::new()
        .prefix("tenure-libvirt-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let rundir = format!("/run/sanlock-tenure-test-{}", std::process::id());
    let mut daemon = Command::new(tenured_bin())
        .env("TENURE_CAPTURE_DIR", tenure_tests::capture_dir())
        .args(["--config", "/dev/null", "--run-dir"])
        .arg(work.path().join("run"))
        .arg("--state-dir")
        .arg(work.path().join("state"))
        .args(["--watchdog", "none", "--io-timeout", "2"])
        .args(["--kill-grace", "2", "--sigkill-max", "2"])
        .args(["--sanlock-compat", "--sanlock-run-dir", &rundir])
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(work.path().join("tenured.log")).unwrap())
        .spawn()
        .unwrap();
    struct Kill(i32);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(self.0),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    let _kill = Kill(daemon.id() as i32);
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
        .env("WORK", work.path().join("lv"))
        .output()
        .unwrap();
    let results = std::fs::read_to_string(work.path().join("lv/results.txt")).unwrap_or_default();
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
    for plan in ["plan A", "plan B", "plan C", "plan D"] {
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
    let _ = std::fs::remove_dir_all(&rundir);
}
