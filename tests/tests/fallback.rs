//! The sync fallback is chosen at run time when io_uring is unavailable: `tenure` runs under a
//! seccomp filter that makes io_uring_setup fail with EPERM (as container runtimes and
//! `kernel.io_uring_disabled` do), says so once on stderr, and still formats and dumps.

use std::process::Command;

use tenure_tests::{prerequisite, tenure_bin, BackingFile};

const UNDER_SECCOMP: &str = r#"
import errno, os, sys, seccomp
f = seccomp.SyscallFilter(seccomp.ALLOW)
f.add_rule(seccomp.ERRNO(errno.EPERM), "io_uring_setup")
f.load()
os.execv(sys.argv[1], sys.argv[1:])
"#;

fn seccomp_available() -> bool {
    prerequisite(
        Command::new("/usr/bin/python3")
            .args(["-c", "import seccomp"])
            .status()
            .is_ok_and(|s| s.success()),
        "python3-seccomp is not installed (the test script installs it)",
    )
}

fn tenure_without_io_uring(args: &[&str]) -> std::process::Output {
    Command::new("/usr/bin/python3")
        .args(["-c", UNDER_SECCOMP])
        .arg(tenure_bin())
        .args(args)
        .output()
        .expect("python3")
}

#[test]
fn io_uring_denied_by_seccomp_falls_back_to_sync_and_says_so() {
    if !seccomp_available() {
        return;
    }
    let file = BackingFile::new(2 << 20);
    let p = file.path().to_string_lossy().into_owned();
    let out = tenure_without_io_uring(&["lockspace", "init", &format!("LS:0:{p}:0"), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["io_backend"], "sync");
    assert!(
        v["io_fallback_reason"]
            .as_str()
            .is_some_and(|r| r.contains("Operation not permitted")),
        "{v}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("using the pread/pwrite fallback").count(),
        1,
        "{stderr}"
    );

    let out = tenure_without_io_uring(&["dump", &p, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["io_backend"], "sync");
    assert_eq!(v["areas"][0]["name"], "LS");

    // Without the filter the same binary uses io_uring, and can be forced to sync.
    let out = Command::new(tenure_bin())
        .args(["dump", &p, "--json"])
        .output()
        .expect("tenure");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        (v["io_backend"].as_str(), v["io_fallback_reason"].as_str()),
        (Some("io_uring"), None)
    );
    let out = Command::new(tenure_bin())
        .args(["--io-backend", "sync", "dump", &p, "--json"])
        .output()
        .expect("tenure");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        (v["io_backend"].as_str(), v["io_fallback_reason"].as_str()),
        (Some("sync"), None)
    );
    assert!(
        out.stderr.is_empty(),
        "a forced backend is not a fallback: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
