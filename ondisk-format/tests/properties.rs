//! Property tests: encode/decode round trips for every record, and the corruption law — any
//! single-byte change of a valid record is either detected by its decoder or lands in a byte
//! range that sanlock's format does not protect (listed here explicitly), leaving every
//! protected field as it was.

use proptest::prelude::*;
use tenure_format::delta::{DeltaSector, HostBitmap, HOST_BITMAP_LEN};
use tenure_format::fuzzing;
use tenure_format::leader::{LeaderRecord, DELTA_MAGIC, DELTA_VERSION, PAXOS_MAGIC, PAXOS_VERSION};
use tenure_format::paxos::{Dblock, ModeBlock, RequestRecord, REQUEST_MAGIC, REQUEST_VERSION};
use tenure_format::rindex::{RindexEntry, RindexHeader};
use tenure_format::spec::{DiskLocation, LockspaceSpec, ResourceMode, ResourceSpec};
use tenure_format::{Geometry, Name};

fn name() -> impl Strategy<Value = Name> {
    proptest::collection::vec(1u8..=255, 1..=48)
        .prop_map(|b| Name::from_slice(&b).expect("1..=48 non-NUL bytes"))
}

prop_compose! {
    fn leader()(
        delta in any::<bool>(), flags in any::<u32>(), ss in prop_oneof![Just(512u32), Just(4096u32)],
        hosts in (any::<u64>(), any::<u64>()), owner in (any::<u64>(), any::<u64>(), any::<u64>()),
        space in name(), res in name(), ts in any::<u64>(), unused in (any::<u64>(), any::<u16>()),
        io_timeout in any::<u16>(), w in (any::<u64>(), any::<u64>(), any::<u64>()),
    ) -> LeaderRecord {
        LeaderRecord {
            magic: if delta { DELTA_MAGIC } else { PAXOS_MAGIC },
            version: if delta { DELTA_VERSION } else { PAXOS_VERSION },
            flags, sector_size: ss, num_hosts: hosts.0, max_hosts: hosts.1,
            owner_id: owner.0, owner_generation: owner.1, lver: owner.2,
            space_name: space, resource_name: res, timestamp: ts,
            unused1: unused.0, checksum: 0, unused2: unused.1, io_timeout,
            write_id: w.0, write_generation: w.1, write_timestamp: w.2,
        }
    }
}

/// Leader bytes the checksum does not cover: unused2 (172..174), io_timeout (174..176),
/// write_id / write_generation / write_timestamp (176..200).
const LEADER_UNPROTECTED: std::ops::Range<usize> = 172..200;

fn protected_eq(a: &LeaderRecord, b: &LeaderRecord) -> bool {
    let strip = |l: &LeaderRecord| LeaderRecord {
        unused2: 0,
        io_timeout: 0,
        write_id: 0,
        write_generation: 0,
        write_timestamp: 0,
        ..*l
    };
    strip(a) == strip(b)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn leader_round_trip(l in leader()) {
        let bytes = l.to_bytes();
        let back = LeaderRecord::decode(&bytes).expect("decodes");
        prop_assert_eq!(LeaderRecord { checksum: 0, ..back }, l);
        prop_assert_eq!(back.to_bytes(), bytes);
    }

    #[test]
    fn leader_single_byte_corruption_detected_or_unprotected(l in leader(), pos in 0usize..512, xor in 1u8..=255) {
        let mut sector = [0u8; 512];
        l.encode_into(&mut sector);
        let original = LeaderRecord::decode(&sector).expect("valid");
        sector[pos] ^= xor;
        match LeaderRecord::decode(&sector) {
            Err(_) => prop_assert!(pos < 172, "byte {} is not checked, yet decoding failed", pos),
            Ok(rec) => {
                prop_assert!(pos >= 200 || LEADER_UNPROTECTED.contains(&pos), "change at byte {} went undetected", pos);
                prop_assert!(protected_eq(&rec, &original));
            }
        }
    }

    #[test]
    fn delta_sector_round_trip(l in leader(), bits in proptest::collection::vec(1u64..=2000, 0..20)) {
        let l = LeaderRecord { magic: DELTA_MAGIC, version: DELTA_VERSION, flags: 0x10, sector_size: 512, ..l };
        let mut bitmap = HostBitmap::default();
        for b in &bits { bitmap.set(*b, true); }
        let s = DeltaSector { leader: l, bitmap };
        let mut sector = [0u8; 512];
        s.encode_into(&mut sector);
        let back = DeltaSector::decode(&sector, Geometry::LEGACY_512, &l.space_name).expect("decodes");
        prop_assert_eq!(back.bitmap, bitmap);
        let mut sorted = bits.clone(); sorted.sort_unstable(); sorted.dedup();
        prop_assert_eq!(back.bitmap.iter().collect::<Vec<_>>(), sorted);
        prop_assert!(HOST_BITMAP_LEN * 8 >= 2000);
    }

    #[test]
    fn dblock_round_trip_and_corruption(v in proptest::array::uniform6(any::<u64>()), flags in any::<u32>(), pos in 0usize..56, xor in 1u8..=255) {
        let d = Dblock { mbal: v[0], bal: v[1], inp: v[2], inp2: v[3], inp3: v[4], lver: v[5], checksum: 0, flags };
        let mut bytes = d.to_bytes();
        let back = Dblock::decode(&bytes).expect("decodes");
        prop_assert_eq!(Dblock { checksum: 0, ..back }, d);
        bytes[pos] ^= xor;
        match Dblock::decode(&bytes) {
            Err(_) => prop_assert!(pos < 52),
            // flags (52..56) are not covered by the checksum; a change that zeroes the whole
            // dblock reads as the valid empty dblock.
            Ok(c) => prop_assert!(pos >= 52 || c.is_zero(), "change at byte {} undetected", pos),
        }
    }

    #[test]
    fn request_and_mode_block_round_trip(lver in any::<u64>(), mode in any::<u32>(), unused in any::<u32>(), g in any::<u64>(), pos in 0usize..8, xor in 1u8..=255) {
        let r = RequestRecord { magic: REQUEST_MAGIC, version: REQUEST_VERSION, lver, force_mode: mode, unused };
        let mut bytes = r.to_bytes();
        prop_assert_eq!(RequestRecord::decode(&bytes).expect("decodes"), r);
        // Magic and major version are the record's only protection.
        bytes[pos] ^= xor;
        let minor_version_byte = pos == 4 || pos == 5;
        prop_assert_eq!(RequestRecord::decode(&bytes).is_err(), !minor_version_byte);
        let m = ModeBlock { flags: mode, unused, generation: g };
        let mut sector = [0u8; 512];
        m.encode_into(&mut sector);
        prop_assert_eq!(ModeBlock::decode_from_sector(&sector).expect("decodes"), m);
    }

    #[test]
    fn rindex_round_trip(flags in any::<u32>(), ss in any::<u32>(), max in any::<u32>(), rx in any::<u64>(), n in name(), off in any::<u64>()) {
        let h = RindexHeader { magic: tenure_format::rindex::RINDEX_MAGIC, version: tenure_format::rindex::RINDEX_VERSION, flags, sector_size: ss, max_resources: max, unused: 0, rx_offset: rx, lockspace_name: n };
        prop_assert_eq!(RindexHeader::decode(&h.to_bytes()).expect("decodes"), h);
        let e = RindexEntry { res_offset: off, flags, unused: 0, name: n };
        prop_assert_eq!(RindexEntry::decode(&e.to_bytes()).expect("decodes"), e);
    }

    #[test]
    fn spec_strings_round_trip(
        ls in "[a-zA-Z0-9_:\\\\.-]{1,20}", res in "[a-zA-Z0-9_:\\\\.-]{1,20}",
        paths in proptest::collection::vec(("/[a-z0-9:\\\\/._-]{1,30}", any::<u64>()), 1..=4),
        host in 0u64..=2000, mode in prop_oneof![Just(ResourceMode::Exclusive), Just(ResourceMode::Shared), any::<u64>().prop_map(ResourceMode::ExclusiveAtLver)],
    ) {
        let disks: Vec<DiskLocation> = paths.into_iter().map(|(path, offset)| DiskLocation { path, offset }).collect();
        let l = LockspaceSpec { name: Name::new(&ls).expect("name"), host_id: host, disk: disks[0].clone() };
        prop_assert_eq!(LockspaceSpec::parse(&l.to_string()).expect("parses"), l);
        let r = ResourceSpec { lockspace: Name::new(&ls).expect("name"), name: Name::new(&res).expect("name"), disks, mode };
        prop_assert_eq!(ResourceSpec::parse(&r.to_string()).expect("parses"), r);
    }

    #[test]
    fn decoders_never_panic(data in proptest::collection::vec(any::<u8>(), 0..9000)) {
        fuzzing::leader(&data);
        fuzzing::delta_sector(&data);
        fuzzing::paxos_records(&data);
        fuzzing::rindex(&data);
        fuzzing::area(&data);
        fuzzing::specs(&data);
    }

    #[test]
    fn string_parsers_never_panic(s in "\\PC{0,80}") {
        fuzzing::specs(s.as_bytes());
    }
}
