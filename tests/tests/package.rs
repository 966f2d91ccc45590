//! The Debian package (issue 20): scripts/package.sh builds it (here from the debug build the
//! suite already made), `dpkg -i` installs it on this machine, the installed files and
//! binaries are checked — `tenured --version`, `tenure doctor` on the installed example
//! configuration, the man pages and completions — and `dpkg --purge` removes it, even when a
//! check fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tenure_tests::{is_root, prerequisite, workspace_root};

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    out
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${Status}", "tenure"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("installed"))
}

/// Purges the package when dropped.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "tenure"]).output();
    }
}

#[test]
fn the_debian_package_installs_runs_and_purges() {
    if !prerequisite(is_root(), "root (dpkg -i)")
        || !prerequisite(Path::new("/usr/bin/dpkg").exists(), "dpkg")
        || !prerequisite(
            !installed() && !Path::new("/etc/tenure").exists(),
            "no tenure package or /etc/tenure on this machine (the test installs and purges its own)",
        )
    {
        return;
    }
    let out_dir = tempfile::tempdir().unwrap();
    let deb = out_dir.path().join("tenure.deb");
    let built = run(Command::new("bash")
        .arg(workspace_root().join("scripts/package.sh"))
        .arg("--output")
        .arg(&deb)
        .env("PROFILE", "dev")
        .current_dir(workspace_root()));
    assert!(built.status.success(), "package.sh: {}", text(&built));
    let contents = text(&run(Command::new("dpkg").arg("-c").arg(&deb)));
    for f in [
        "./usr/sbin/tenured",
        "./usr/bin/tenure",
        "./lib/systemd/system/tenured.service",
        "./etc/tenure/tenured.toml",
        "./usr/share/doc/tenure/examples/tenured.toml",
        "./usr/share/doc/tenure/operations.md",
        "./usr/share/doc/tenure/copyright",
        "./usr/share/man/man8/tenured.8",
        "./usr/share/man/man1/tenure.1",
        "./usr/share/man/man1/tenure-lockspace-join.1",
        "./usr/share/man/man1/tenure-metrics.1",
        "./usr/share/bash-completion/completions/tenure",
        "./usr/share/zsh/vendor-completions/_tenure",
        "./usr/share/fish/vendor_completions.d/tenure.fish",
    ] {
        assert!(contents.contains(f), "{f} not in the package:\n{contents}");
    }
    let info = text(&run(Command::new("dpkg").arg("-I").arg(&deb)));
    assert!(info.contains("Package: tenure"), "{info}");
    assert!(
        info.contains("conffiles"),
        "/etc/tenure/tenured.toml is a conffile: {info}"
    );
    let _purge = Installed;
    let inst = run(Command::new("dpkg").arg("-i").arg(&deb));
    assert!(inst.status.success(), "dpkg -i: {}", text(&inst));
    assert!(installed());
    for f in [
        "/usr/sbin/tenured",
        "/usr/bin/tenure",
        "/lib/systemd/system/tenured.service",
        "/etc/tenure/tenured.toml",
    ] {
        assert!(Path::new(f).exists(), "{f} installed");
    }
    let conffiles = text(&run(Command::new("dpkg-query").args([
        "-W",
        "-f",
        "${Conffiles}",
        "tenure",
    ])));
    assert!(
        conffiles.contains("/etc/tenure/tenured.toml"),
        "{conffiles}"
    );
    let v = run(Command::new("/usr/sbin/tenured").arg("--version"));
    assert!(v.status.success(), "{}", text(&v));
    assert_eq!(
        text(&v).trim(),
        format!("tenured {}", env!("CARGO_PKG_VERSION"))
    );
    let v = run(Command::new("/usr/bin/tenure").arg("--version"));
    assert_eq!(
        text(&v).trim(),
        format!("tenure {}", env!("CARGO_PKG_VERSION"))
    );
    // doctor reads the installed configuration (/etc/tenure/tenured.toml: a watchdog device
    // and no lockspace) and judges this machine: exit 0, 1 or 2 by its worst finding, and a
    // watchdog finding either way.
    let doc = run(Command::new("/usr/bin/tenure").args(["doctor", "--json"]));
    let code = doc.status.code();
    assert!(
        matches!(code, Some(0..=2)),
        "doctor exit {code:?}: {}",
        text(&doc)
    );
    let report: serde_json::Value = serde_json::from_slice(&doc.stdout)
        .unwrap_or_else(|e| panic!("doctor --json: {e}: {}", text(&doc)));
    assert!(report.to_string().contains("watchdog"), "{report}");
    if !Path::new("/dev/watchdog").exists() {
        assert_eq!(code, Some(2), "no /dev/watchdog is an error: {report}");
    }
    // The man page renders and names its command.
    let page = std::fs::read_to_string("/usr/share/man/man8/tenured.8").unwrap_or_default();
    assert!(page.contains(".TH tenured 8"), "{page}");
    drop(_purge);
    assert!(!installed(), "purged");
    for f in ["/usr/sbin/tenured", "/etc/tenure/tenured.toml"] {
        assert!(!PathBuf::from(f).exists(), "{f} removed by the purge");
    }
}
