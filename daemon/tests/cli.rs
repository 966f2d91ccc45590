//! The `tenure` binary on regular files (no root needed): format, refusal to overwrite,
//! `--force`, dump in both forms, exit codes, and a damaged sector reported as a checksum
//! problem of that record.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output};

fn tenure(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tenure"))
        .args(args)
        .output()
        .expect("run tenure")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A 4 MiB file on a disk file system (O_DIRECT needs one).
fn lease_file() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let path = dir.path().join("leases");
    std::fs::File::create(&path)
        .and_then(|f| f.set_len(4 << 20))
        .expect("file");
    let p = path.to_string_lossy().into_owned();
    (dir, p)
}

fn flip(path: &str, offset: u64, mask: u8) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(Path::new(path))
        .expect("open");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).expect("read");
    b[0] ^= mask;
    f.write_all_at(&b, offset).expect("write");
    f.sync_all().expect("sync");
}

#[test]
fn init_refuse_force_and_dump() {
    let (_dir, p) = lease_file();
    let o = tenure(&[
        "lockspace",
        "init",
        &format!("LS:0:{p}:0"),
        "--io-timeout",
        "3",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("formatted lockspace \"LS\""),
        "{}",
        stdout(&o)
    );
    let o = tenure(&[
        "resource",
        "init",
        &format!("LS:vm-1:{p}:1M"),
        "--num-hosts",
        "8",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v[0]["offset"].as_u64(), Some(1 << 20));

    let o = tenure(&["lockspace", "init", &format!("LS:0:{p}:0")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("already holds a valid lockspace \"LS\"; use --force"),
        "{}",
        stderr(&o)
    );
    let o = tenure(&["resource", "init", &format!("LS:other:{p}:1M")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("resource \"vm-1\""), "{}", stderr(&o));

    let o = tenure(&["dump", &p]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("lockspace \"LS\" at offset 0 (512/1M, 2000 host ids)"),
        "{text}"
    );
    assert!(
        text.contains("resource \"vm-1\" of lockspace \"LS\" at offset 1048576"),
        "{text}"
    );
    assert!(text.contains("num_hosts 8"), "{text}");
    assert!(
        text.contains("2 empty (all-zero) area(s) skipped"),
        "{text}"
    );

    let o = tenure(&["lockspace", "init", &format!("NEW:0:{p}:0"), "--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("replaced a valid lockspace \"LS\""),
        "{}",
        stdout(&o)
    );
}

#[test]
fn damaged_sector_is_reported_per_record_with_exit_3() {
    let (_dir, p) = lease_file();
    assert!(tenure(&["lockspace", "init", &format!("LS:0:{p}:0")])
        .status
        .success());
    assert!(tenure(&["resource", "init", &format!("LS:r:{p}:2M")])
        .status
        .success());
    // One flipped byte in host id 7's owner_generation, one in the resource's lver.
    flip(&p, 6 * 512 + 40, 0x10);
    flip(&p, (2 << 20) + 48, 0x01);
    let o = tenure(&["dump", &p, "--json"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let areas = v["areas"].as_array().expect("areas");
    let ls_problems = areas[0]["problems"].as_array().expect("problems");
    assert_eq!(ls_problems.len(), 1, "{v}");
    assert_eq!(ls_problems[0]["host_id"].as_u64(), Some(7));
    assert_eq!(ls_problems[0]["sector"].as_u64(), Some(6));
    assert_eq!(ls_problems[0]["error_kind"], "bad_checksum");
    let res_problems = areas[1]["problems"].as_array().expect("problems");
    assert_eq!(res_problems[0]["record"], "leader");
    assert_eq!(res_problems[0]["error_kind"], "bad_checksum");
    // The human form says the same.
    let o = tenure(&["dump", &p]);
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stdout(&o).contains("sector 6 (host id 7, delta lease): checksum mismatch"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn unrecognised_data_is_named_not_skipped() {
    let (_dir, p) = lease_file();
    let f = OpenOptions::new().write(true).open(&p).expect("open");
    f.write_all_at(b"\x7fELF this is not a lease area", 1 << 20)
        .expect("write");
    f.write_all_at(b"more data", 2 << 20).expect("write");
    f.sync_all().expect("sync");
    let o = tenure(&["dump", &p]);
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stdout(&o).contains("UNRECOGNISED: 2 area(s) from offset 1048576"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn clear_errors_for_bad_input() {
    let (_dir, p) = lease_file();
    let cases: [(&[&str], &str); 7] = [
        (
            &["lockspace", "init", "LS:0:/nonexistent/x:0"],
            "cannot open /nonexistent/x",
        ),
        (
            &["lockspace", "init", &format!("LS:0:{p}")],
            "needs the form NAME:HOST_ID:PATH:OFFSET",
        ),
        (
            &[
                "lockspace",
                "init",
                &format!("LS:0:{p}:0"),
                "--sector-size",
                "512",
                "--align",
                "8M",
            ],
            "512-byte sectors allow only 1M",
        ),
        (
            &[
                "lockspace",
                "init",
                &format!("LS:0:{p}:0"),
                "--sector-size",
                "4096",
            ],
            "needs 8388608 bytes but the device has 4194304",
        ),
        (
            &[
                "resource",
                "init",
                &format!("LS:r:{p}:0"),
                "--num-hosts",
                "2001",
            ],
            "--num-hosts 2001 is out of range",
        ),
        (&["dump", &format!("{p}:100")], "not aligned to 512 bytes"),
        (
            &["resource", "init", &format!("LS:r:{p}:0:SH")],
            "only applies to acquire",
        ),
    ];
    for (args, expected) in cases {
        let o = tenure(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(expected), "{args:?}: {}", stderr(&o));
    }
    let o = tenure(&[
        "lockspace",
        "init",
        &format!("LS:0:{p}:0"),
        "--sector-size",
        "1024",
    ]);
    assert_eq!(o.status.code(), Some(2), "usage error: {}", stderr(&o));
}
