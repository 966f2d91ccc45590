//! The direct commands on real block devices (loop devices with direct I/O): the sector size
//! is probed with BLKSSZGET, a disagreeing `--sector-size` is a clear error, and the default
//! geometry follows the device.

use tenure_tests::{
    loop_devices_available, tenure, tenure_dump_json, tenure_ok, BackingFile, LoopDevice,
};

#[test]
fn sector_size_is_probed_and_mismatch_refused() {
    if !loop_devices_available() {
        return;
    }
    let file = BackingFile::new(16 << 20);
    let dev = LoopDevice::attach(file.path(), 4096);
    let p = dev.path_str();
    let o = tenure(&[
        "lockspace",
        "init",
        &format!("LS:0:{p}:0"),
        "--sector-size",
        "512",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("has 4096-byte logical sectors but --sector-size 512 was given"),
        "{err}"
    );
    // No --sector-size: probed 4096, legacy align 8M.
    let out = tenure_ok(&["lockspace", "init", &format!("LS:0:{p}:0")]);
    assert!(out.contains("(4096/8M, 2000 host ids)"), "{out}");
    let (code, v) = tenure_dump_json(&p);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["logical_sector_size"].as_u64(), Some(4096));
    assert_eq!(v["device_kind"], "block");
    assert_eq!(
        v["areas"][0]["geometry"]["align_bytes"].as_u64(),
        Some(8 << 20)
    );
    assert_eq!(v["areas"][0]["geometry"]["hosts_max"].as_u64(), Some(2000));
    // A 4096/1M resource right after the lockspace.
    let out = tenure_ok(&["resource", "init", &format!("LS:r:{p}:8M"), "--align", "1M"]);
    assert!(out.contains("(4096/1M, 250 host ids)"), "{out}");
}
