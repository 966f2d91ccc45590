//! Lease areas written by real sanlock 3.8.5 (tests/fixtures/make-golden.py, kept in
//! ondisk-format/tests/golden), decoded without sanlock: every area recognised, every record checksum-verified, every leader field equal to
//! what `sanlock direct read_leader` printed for it, and free records byte-identical to what
//! tenure's own encoders write.

use std::io::Read;

use tenure_format::area::{decode_area, encode_resource_area, identify, AreaReport, PROBE_LEN};
use tenure_format::{AlignSize, Geometry, LeaderRecord, Name, SectorSize};
use tenure_tests::{assert_matches_read_leader, workspace_root};

struct Golden {
    geometry: Geometry,
    img: Vec<u8>,
    sidecar: String,
}

fn load(ss: SectorSize, align: AlignSize, kind: &str) -> Golden {
    let dir = workspace_root().join("ondisk-format/tests/golden");
    let tag = format!("sanlock-3.8.5-{}-{}-{kind}", ss.bytes(), align);
    let gz = std::fs::File::open(dir.join(format!("{tag}.img.gz"))).expect("fixture");
    let mut img = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut img)
        .expect("gunzip");
    let sidecar = std::fs::read_to_string(dir.join(format!("{tag}.txt"))).expect("sidecar");
    Golden {
        geometry: Geometry::new(ss, align).expect("geometry"),
        img,
        sidecar,
    }
}

const ALL: [(SectorSize, AlignSize); 3] = [
    (SectorSize::B512, AlignSize::M1),
    (SectorSize::B4096, AlignSize::M1),
    (SectorSize::B4096, AlignSize::M8),
];

/// The output sanlock printed after `$ sanlock direct <command>` in the sidecar.
fn sanlock_output<'a>(sidecar: &'a str, command: &str) -> &'a str {
    let marker = format!("$ sanlock direct {command}\n");
    let start = sidecar
        .find(&marker)
        .unwrap_or_else(|| panic!("{command} not in sidecar"));
    &sidecar[start + marker.len()..]
}

fn areas(g: &Golden) -> Vec<AreaReport> {
    let a = g.geometry.area_bytes() as usize;
    g.img
        .chunks_exact(a)
        .enumerate()
        .map(|(i, area)| {
            let probe = identify(&area[..PROBE_LEN]);
            assert_eq!(probe.geometry, Some(g.geometry), "area {i}: {probe:?}");
            assert!(probe.note.is_none(), "area {i}: {probe:?}");
            decode_area((i * a) as u64, &probe, area).expect("not empty")
        })
        .collect()
}

fn no_problems(r: &AreaReport) {
    match r {
        AreaReport::Lockspace { problems, .. } | AreaReport::Resource { problems, .. } => {
            assert!(problems.is_empty(), "{problems:?}")
        }
        AreaReport::Rindex { .. } => {}
        AreaReport::Unrecognised { .. } => panic!("{r:?}"),
    }
}

#[test]
fn every_area_decodes_with_sanlocks_field_values() {
    for (ss, align) in ALL {
        for kind in ["held", "released"] {
            let g = load(ss, align, kind);
            let a = g.geometry.area_bytes() as usize;
            let s = g.geometry.sector_size_bytes() as usize;
            let reports = areas(&g);
            assert_eq!(reports.len(), 7);
            reports.iter().for_each(no_problems);
            // Leaders, field for field against sanlock's own read.
            let slot1 = LeaderRecord::decode(&g.img[..s]).expect("slot 1");
            let out = sanlock_output(&g.sidecar, "read_leader -s GOLD:1:DEV:0");
            assert_matches_read_leader(&slot1, out, "slot 1");
            for (name, n) in [("ex", 1), ("sh", 2), ("rq", 6)] {
                let l = LeaderRecord::decode(&g.img[n * a..n * a + s]).expect("leader");
                let cmd = format!("read_leader -r GOLD:{name}:DEV:{}", n * a);
                assert_matches_read_leader(&l, sanlock_output(&g.sidecar, &cmd), name);
            }
        }
    }
}

#[test]
fn held_snapshot_facts() {
    for (ss, align) in ALL {
        let g = load(ss, align, "held");
        let r = areas(&g);
        let AreaReport::Lockspace {
            name, slots_in_use, ..
        } = &r[0]
        else {
            panic!("{:?}", r[0])
        };
        assert_eq!(name.map(|n| n.escaped()), Some("GOLD".into()));
        assert_eq!(slots_in_use.len(), 1);
        let slot = &slots_in_use[0];
        assert_eq!(
            (
                slot.host_id,
                slot.owner_id,
                slot.generation,
                slot.io_timeout
            ),
            (1, 1, 1, 1)
        );
        assert!(
            slot.timestamp > 0 && slot.owner_name.as_bytes().len() > 30,
            "{slot:?}"
        );
        // set_event(host 2, generation 1, event 5, data 9): bit 2 and the event fields.
        assert_eq!(slot.bitmap, vec![2]);
        assert_eq!(
            (slot.write_id, slot.write_generation, slot.write_timestamp),
            (1, 5, 9)
        );
        let AreaReport::Resource {
            leader: Some(l),
            request: Some(q),
            dblocks,
            ..
        } = &r[1]
        else {
            panic!("{:?}", r[1])
        };
        assert_eq!(
            (l.owner_id, l.owner_generation, l.lver, l.write_id),
            (1, 1, 1, 1)
        );
        assert_eq!(
            (q.lver, q.force_mode),
            (2, 2),
            "GRACEFUL request for lver 2"
        );
        assert_eq!(dblocks.len(), 1);
        let d = dblocks[0].dblock;
        assert_eq!(
            (
                dblocks[0].host_id,
                d.mbal,
                d.bal,
                d.inp,
                d.inp2,
                d.lver,
                d.flags
            ),
            (1, 1, 1, 1, 1, 1, 0)
        );
        assert_eq!(d.inp3, l.timestamp);
        let AreaReport::Resource {
            leader: Some(l),
            dblocks,
            ..
        } = &r[2]
        else {
            panic!()
        };
        assert_eq!(l.timestamp, 0, "a shared holder does not keep the leader");
        let m = dblocks[0].mode_block.expect("mode block");
        assert!(m.is_shared() && m.generation == 1);
        assert_eq!(
            dblocks[0].dblock.flags,
            tenure_format::paxos::DBLOCK_FLAG_RELEASED
        );
        let AreaReport::Rindex {
            header, entries, ..
        } = &r[3]
        else {
            panic!()
        };
        assert_eq!(header.rx_offset, 3 * g.geometry.area_bytes());
        assert_eq!(entries.len(), 1);
        assert_eq!(
            (
                entries[0].0,
                entries[0].1.name.escaped(),
                entries[0].1.res_offset
            ),
            (0, "ix".into(), 5 * g.geometry.area_bytes())
        );
        let AreaReport::Resource {
            leader: Some(l), ..
        } = &r[4]
        else {
            panic!()
        };
        assert_eq!(
            l.resource_name.escaped(),
            tenure_format::rindex::RINDEX_LEASE_NAME
        );
    }
}

#[test]
fn released_snapshot_facts_and_lvb() {
    for (ss, align) in ALL {
        let g = load(ss, align, "released");
        let r = areas(&g);
        let AreaReport::Resource {
            leader: Some(l),
            dblocks,
            lvb_hex,
            ..
        } = &r[1]
        else {
            panic!()
        };
        assert_eq!((l.timestamp, l.lver), (0, 1));
        assert_eq!(
            dblocks[0].dblock.flags,
            tenure_format::paxos::DBLOCK_FLAG_RELEASED
        );
        let expect_lvb = g.geometry.lvb_offset().is_ok();
        let golden_lvb: String = b"golden lvb".iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            lvb_hex.clone(),
            expect_lvb.then_some(golden_lvb),
            "{}",
            g.geometry
        );
        let AreaReport::Resource { dblocks, .. } = &r[2] else {
            panic!()
        };
        assert!(
            dblocks[0].mode_block.is_none(),
            "release clears the mode block"
        );
    }
}

#[test]
fn tenure_encoders_reproduce_sanlock_bytes() {
    for (ss, align) in ALL {
        let g = load(ss, align, "held");
        let a = g.geometry.area_bytes() as usize;
        let s = g.geometry.sector_size_bytes() as usize;
        // A free slot (host id 2 and up) as sanlock's `direct init` wrote it.
        let mut sector = vec![0u8; s];
        LeaderRecord::new_delta_free(g.geometry, Name::new("GOLD").unwrap(), 10)
            .encode_into(&mut sector);
        assert_eq!(&g.img[s..2 * s], &sector[..], "{}: free slot", g.geometry);
        let last = g.geometry.hosts_max() as usize - 1;
        assert_eq!(&g.img[last * s..(last + 1) * s], &sector[..]);
        // Sectors after the last slot stay zero.
        assert!(g.img[(last + 1) * s..a].iter().all(|&b| b == 0));
        // The untouched resource "ix" is byte-identical to tenure's format.
        let mut ours = vec![0u8; a];
        encode_resource_area(
            &mut ours,
            g.geometry,
            Name::new("GOLD").unwrap(),
            Name::new("ix").unwrap(),
            g.geometry.hosts_max(),
        );
        assert!(
            ours == g.img[5 * a..6 * a],
            "{}: resource area differs",
            g.geometry
        );
    }
}
