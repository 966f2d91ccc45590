//! Interop with real sanlock 3.8.5 on loop devices (512/1M, 4096/1M, 4096/8M):
//! (a) areas formatted by `sanlock direct init` are decoded by tenure field for field;
//! (b) areas formatted by `tenure` are accepted by `sanlock direct read_leader` and `dump`;
//! (c) a sanlock daemon joins a tenure-formatted lockspace and acquires and releases a
//!     tenure-formatted resource;
//! plus `tenure dump --json` of a live sanlock host and of a damaged sector.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tenure_core::dev::Access;
use tenure_core::direct::{BackendKind, DirectDisk};
use tenure_format::{AlignSize, Geometry, LeaderRecord, Name, SectorSize};
use tenure_tests::{
    assert_matches_read_leader, parse_read_leader, sanlock_available, sanlock_direct, sanlock_lock,
    tenure_dump_json, tenure_ok, BackingFile, LoopDevice, SanlockDaemon,
};

const GEOMETRIES: [(u32, &str); 3] = [(512, "1M"), (4096, "1M"), (4096, "8M")];

/// One shared LUN: a backing file with a loop device of the given sector size.
struct Lun {
    dev: LoopDevice,
    _file: BackingFile,
    geometry: Geometry,
    align_text: &'static str,
}

impl Lun {
    fn new(sector_size: u32, align_text: &'static str) -> Self {
        let geometry = Geometry::new(
            SectorSize::from_bytes(u64::from(sector_size)).expect("sector size"),
            AlignSize::parse(align_text).expect("align"),
        )
        .expect("geometry");
        let file = BackingFile::new(4 * geometry.area_bytes());
        let dev = LoopDevice::attach(file.path(), sector_size);
        Lun {
            dev,
            _file: file,
            geometry,
            align_text,
        }
    }

    fn path(&self) -> String {
        self.dev.path_str()
    }

    fn area(&self, n: u64) -> u64 {
        n * self.geometry.area_bytes()
    }

    /// `sanlock direct init` of lockspace "LS" at area 0 and resource "LS:RES" at area 1.
    fn sanlock_init(&self) {
        let p = self.path();
        let geo = self.sanlock_geometry_args();
        sanlock_direct(&[&["init", "-s", &format!("LS:0:{p}:0")][..], &args(&geo)].concat());
        let res = format!("LS:RES:{p}:{}", self.area(1));
        sanlock_direct(&[&["init", "-r", &res][..], &args(&geo)].concat());
    }

    /// `tenure lockspace init TLS:0:DEV:0 --io-timeout T` with this LUN's geometry.
    fn tenure_init_lockspace(&self, io_timeout: &str) {
        let spec = format!("TLS:0:{}:0", self.path());
        tenure_ok(
            &[
                &["lockspace", "init", &spec, "--io-timeout", io_timeout][..],
                &args(&self.tenure_geometry_args()),
            ]
            .concat(),
        );
    }

    /// `tenure resource init TLS:TRES:DEV:<area 1> [--num-hosts N]` with this LUN's geometry.
    fn tenure_init_resource(&self, num_hosts: Option<&str>) {
        let spec = format!("TLS:TRES:{}:{}", self.path(), self.area(1));
        let extra: Vec<&str> = num_hosts
            .map(|n| vec!["--num-hosts", n])
            .unwrap_or_default();
        tenure_ok(
            &[
                &["resource", "init", &spec][..],
                &extra,
                &args(&self.tenure_geometry_args()),
            ]
            .concat(),
        );
    }

    fn sanlock_geometry_args(&self) -> [String; 4] {
        [
            "-Z".into(),
            self.geometry.sector_size_bytes().to_string(),
            "-A".into(),
            self.align_text.into(),
        ]
    }

    fn tenure_geometry_args(&self) -> [String; 4] {
        [
            "--sector-size".into(),
            self.geometry.sector_size_bytes().to_string(),
            "--align".into(),
            self.align_text.into(),
        ]
    }

    /// Reads one sector through O_DIRECT (what another host would see).
    fn read_sector(&self, offset: u64) -> Vec<u8> {
        let mut disk =
            DirectDisk::open(self.dev.path(), Access::Read, BackendKind::Auto).expect("open");
        disk.read(
            offset,
            self.geometry.sector_size_bytes() as usize,
            <[u8]>::to_vec,
        )
        .expect("read")
    }

    fn write_sector(&self, offset: u64, bytes: &[u8]) {
        let mut disk =
            DirectDisk::open(self.dev.path(), Access::ReadWrite, BackendKind::Auto).expect("open");
        disk.write(offset, bytes).expect("write");
    }

    fn dump_json(&self, areas: u64) -> (i32, Value) {
        tenure_dump_json(&format!("{}:0:{}", self.path(), self.area(areas)))
    }
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn areas(v: &Value) -> &Vec<Value> {
    v["areas"].as_array().expect("areas")
}

#[test]
fn a_sanlock_formatted_areas_decode_field_for_field() {
    if !sanlock_available() {
        return;
    }
    for (ss, align) in GEOMETRIES {
        let lun = Lun::new(ss, align);
        let p = lun.path();
        lun.sanlock_init();
        let g = lun.geometry;
        // Slots 1 and the last one, and the resource leader: checksum verified by decode_expect.
        for host_id in [1, g.hosts_max()] {
            let sector = lun.read_sector(g.delta_slot_offset(host_id));
            let rec = tenure_format::DeltaSector::decode(&sector, g, &Name::new("LS").unwrap())
                .expect("slot decodes")
                .leader;
            let out = sanlock_direct(&["read_leader", "-s", &format!("LS:{host_id}:{p}:0")]);
            assert_matches_read_leader(&rec, &out, &format!("{g} slot {host_id}"));
        }
        let sector = lun.read_sector(lun.area(1));
        let rec = LeaderRecord::decode_expect(
            &sector,
            tenure_format::LeaderKind::Paxos,
            g,
            &Name::new("LS").unwrap(),
            Some(&Name::new("RES").unwrap()),
        )
        .expect("resource leader decodes");
        let out = sanlock_direct(&["read_leader", "-r", &format!("LS:RES:{p}:{}", lun.area(1))]);
        assert_matches_read_leader(&rec, &out, &format!("{g} resource"));
        // The whole-device dump recognises both areas with their geometry and no problem.
        let (code, v) = lun.dump_json(2);
        assert_eq!(code, 0, "{v}");
        let a = areas(&v);
        assert_eq!(a.len(), 2, "{v}");
        assert_eq!(a[0]["kind"], "lockspace");
        assert_eq!(a[0]["name"], "LS");
        assert_eq!(a[1]["kind"], "resource");
        assert_eq!(a[1]["leader"]["resource_name"], "RES");
        for area in a {
            let geometry = &area["geometry"];
            assert_eq!(geometry["sector_size_bytes"].as_u64(), Some(u64::from(ss)));
            assert_eq!(geometry["align_bytes"].as_u64(), Some(g.area_bytes()));
            assert_eq!(geometry["hosts_max"].as_u64(), Some(g.hosts_max()));
            assert_eq!(area["problems"].as_array().map(Vec::len), Some(0));
        }
    }
}

#[test]
fn b_tenure_formatted_areas_are_accepted_by_sanlock_direct() {
    if !sanlock_available() {
        return;
    }
    for (ss, align) in GEOMETRIES {
        let lun = Lun::new(ss, align);
        let p = lun.path();
        lun.tenure_init_lockspace("7");
        lun.tenure_init_resource(Some("17"));
        let g = lun.geometry;
        let out = sanlock_direct(&["read_leader", "-s", &format!("TLS:1:{p}:0")]);
        let fields = parse_read_leader(&out);
        let get = |k: &str| {
            fields
                .iter()
                .find(|(f, _)| f == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("{k} in {out}"))
        };
        assert_eq!(get("magic"), "0x12212010");
        assert_eq!(get("space_name"), "TLS");
        assert_eq!(get("sector_size"), ss.to_string());
        assert_eq!(get("flags"), format!("{:#x}", g.align().leader_flag()));
        assert_eq!(get("io_timeout"), "7");
        // And sanlock's read equals tenure's own decoding, checksum included.
        let rec = LeaderRecord::decode(&lun.read_sector(0)).expect("decode");
        assert_matches_read_leader(&rec, &out, &format!("{g} tenure slot 1"));
        let out = sanlock_direct(&[
            "read_leader",
            "-r",
            &format!("TLS:TRES:{p}:{}", lun.area(1)),
        ]);
        let rec = LeaderRecord::decode(&lun.read_sector(lun.area(1))).expect("decode");
        assert_matches_read_leader(&rec, &out, &format!("{g} tenure resource"));
        let fields = parse_read_leader(&out);
        assert!(fields.contains(&("num_hosts".into(), "17".into())), "{out}");
        assert!(
            fields.contains(&("max_hosts".into(), g.hosts_max().to_string())),
            "{out}"
        );
        // sanlock's dump lists the resource with its names at its offset.
        let dump = sanlock_direct(&["dump", &format!("{p}:0:{}", lun.area(2))]);
        let line = dump
            .lines()
            .find(|l| l.contains("TRES"))
            .unwrap_or_else(|| panic!("no TRES in sanlock dump:\n{dump}"));
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            cols[0].parse::<u64>().expect("offset column"),
            lun.area(1),
            "{line}"
        );
        assert_eq!(&cols[1..3], &["TLS", "TRES"], "{line}");
    }
}

/// A python3-sanlock client that joins, acquires, then waits for our go-ahead to release.
const JOIN_ACQUIRE_RELEASE: &str = r#"
import sys, sanlock
ls, dev, ls_off, res_off = sys.argv[1].encode(), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
align, sector = int(sys.argv[5]), int(sys.argv[6])
sanlock.add_lockspace(ls, 1, dev, ls_off, iotimeout=1)
fd = sanlock.register()
sanlock.acquire(ls, b"TRES", [(dev, res_off)], slkfd=fd)
owners = sanlock.read_resource_owners(ls, b"TRES", [(dev, res_off)], align=align, sector=sector)
print("HELD", owners[0]["host_id"], owners[0]["generation"], flush=True)
sys.stdin.readline()
sanlock.release(ls, b"TRES", [(dev, res_off)], slkfd=fd)
sanlock.rem_lockspace(ls, 1, dev, ls_off)
print("DONE", flush=True)
"#;

#[test]
fn c_sanlock_daemon_joins_and_acquires_tenure_areas() {
    if !sanlock_available() {
        return;
    }
    let _serial = sanlock_lock();
    let daemon = SanlockDaemon::start();
    for (ss, align) in GEOMETRIES {
        let lun = Lun::new(ss, align);
        let p = lun.path();
        // The io_timeout recorded in a free slot sets the joiner's first delay (2T): 1 s here.
        lun.tenure_init_lockspace("1");
        lun.tenure_init_resource(None);
        let mut py = Command::new("/usr/bin/python3")
            .args([
                "-c",
                JOIN_ACQUIRE_RELEASE,
                "TLS",
                &p,
                "0",
                &lun.area(1).to_string(),
            ])
            .args([
                lun.geometry.area_bytes().to_string(),
                lun.geometry.sector_size_bytes().to_string(),
            ])
            .env("SANLOCK_RUN_DIR", daemon.rundir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut lines = BufReader::new(py.stdout.take().expect("stdout")).lines();
        let held = lines.next().and_then(Result::ok).unwrap_or_default();
        assert_eq!(
            held,
            "HELD 1 1",
            "{} (sanlock log: {:?})",
            lun.geometry,
            std::fs::read_to_string(daemon.rundir().join("daemon.log"))
        );
        // While sanlock holds it, tenure sees host 1 live in its slot and as the owner.
        let (code, v) = lun.dump_json(2);
        assert_eq!(code, 0, "{v}");
        let a = areas(&v);
        let slot = &a[0]["slots_in_use"][0];
        assert_eq!(
            (
                slot["host_id"].as_u64(),
                slot["generation"].as_u64(),
                slot["io_timeout"].as_u64()
            ),
            (Some(1), Some(1), Some(1))
        );
        assert!(slot["timestamp"].as_u64() > Some(0));
        let leader = &a[1]["leader"];
        assert_eq!(
            (leader["owner_id"].as_u64(), leader["lver"].as_u64()),
            (Some(1), Some(1)),
            "{v}"
        );
        assert!(leader["timestamp"].as_u64() > Some(0));
        assert_eq!(a[1]["dblocks"][0]["dblock"]["inp"].as_u64(), Some(1));
        py.stdin
            .as_mut()
            .expect("stdin")
            .write_all(b"go\n")
            .expect("go");
        assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("DONE"));
        assert!(py.wait().expect("wait").success());
        let (_, v) = lun.dump_json(2);
        let a = areas(&v);
        assert_eq!(
            a[1]["leader"]["timestamp"].as_u64(),
            Some(0),
            "released: {v}"
        );
        assert_eq!(
            a[1]["dblocks"][0]["dblock"]["flags"].as_u64(),
            Some(1),
            "RELEASED flag: {v}"
        );
        assert_eq!(
            a[0]["slots_in_use"][0]["timestamp"].as_u64(),
            Some(0),
            "left the lockspace: {v}"
        );
    }
}

#[test]
fn dump_json_of_a_live_sanlock_host_shows_its_slot_renewing() {
    if !sanlock_available() {
        return;
    }
    let _serial = sanlock_lock();
    let daemon = SanlockDaemon::start();
    let lun = Lun::new(512, "1M");
    let p = lun.path();
    sanlock_direct(&["init", "-s", &format!("LIVE:0:{p}:0")]);
    daemon.python(&format!(
        "import sanlock; sanlock.add_lockspace(b'LIVE', 1, '{p}', 0, iotimeout=1)"
    ));
    let status = daemon.client(&["status", "-D"]);
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    let host_name = status
        .lines()
        .find_map(|l| l.trim().strip_prefix("our_host_name="))
        .unwrap_or_else(|| panic!("no our_host_name in {status}"))
        .to_owned();
    let slot = |v: &Value| v["areas"][0]["slots_in_use"][0].clone();
    let (code, first) = lun.dump_json(1);
    assert_eq!(code, 0);
    let s1 = slot(&first);
    assert_eq!(s1["owner_name"], host_name.as_str());
    assert_eq!(s1["host_id"].as_u64(), Some(1));
    assert!(s1["generation"].as_u64() >= Some(1));
    std::thread::sleep(Duration::from_secs(3));
    let (_, second) = lun.dump_json(1);
    let s2 = slot(&second);
    assert_eq!(s2["owner_name"], host_name.as_str());
    assert_eq!(s2["generation"], s1["generation"]);
    let (t1, t2) = (
        s1["timestamp"].as_u64().expect("t1"),
        s2["timestamp"].as_u64().expect("t2"),
    );
    assert!(
        t2 > t1,
        "timestamp did not advance in 3 s with io_timeout 1: {t1} -> {t2}"
    );
    daemon.python(&format!(
        "import sanlock; sanlock.rem_lockspace(b'LIVE', 1, '{p}', 0)"
    ));
}

#[test]
fn flipped_byte_in_sanlock_area_is_a_checksum_problem() {
    if !sanlock_available() {
        return;
    }
    for (ss, align) in GEOMETRIES {
        let lun = Lun::new(ss, align);
        let p = lun.path();
        lun.sanlock_init();
        // Host id 5's generation field, and a byte of the resource's lver.
        let slot5 = lun.geometry.delta_slot_offset(5);
        let mut s = lun.read_sector(slot5);
        s[40] ^= 0x01;
        lun.write_sector(slot5, &s);
        let mut r = lun.read_sector(lun.area(1));
        r[48] ^= 0x80;
        lun.write_sector(lun.area(1), &r);
        let (code, v) = lun.dump_json(2);
        assert_eq!(code, 3, "dump exits 3 when records are damaged: {v}");
        let a = areas(&v);
        let problems = a[0]["problems"].as_array().expect("problems");
        assert_eq!(problems.len(), 1, "{v}");
        assert_eq!(problems[0]["host_id"].as_u64(), Some(5));
        assert_eq!(problems[0]["error_kind"], "bad_checksum");
        let problems = a[1]["problems"].as_array().expect("problems");
        assert_eq!(
            (
                problems[0]["record"].as_str(),
                problems[0]["error_kind"].as_str()
            ),
            (Some("leader"), Some("bad_checksum")),
            "{v}"
        );
        // sanlock agrees the slot is damaged.
        let out = Command::new("sanlock")
            .args(["direct", "read_leader", "-s", &format!("LS:5:{p}:0")])
            .output()
            .expect("sanlock");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !text.contains("read_leader done 0"),
            "sanlock accepted a damaged slot: {text}"
        );
    }
}
