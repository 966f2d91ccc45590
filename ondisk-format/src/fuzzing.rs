//! Entry points shared by the cargo-fuzz targets (`ondisk-format/fuzz`) and the property
//! tests, so the same code is fuzzed with coverage guidance and exercised in every
//! `cargo test`. Each takes arbitrary bytes and must neither panic nor loop; the asserts
//! inside check round-trip laws that hold for any input the decoders accept.

use crate::area::{decode_area, identify};
use crate::delta::DeltaSector;
use crate::geometry::Geometry;
use crate::leader::LeaderRecord;
use crate::name::Name;
use crate::paxos::{Dblock, ModeBlock, RequestRecord};
use crate::rindex::{RindexEntry, RindexHeader};
use crate::spec::{DumpTarget, LockspaceSpec, ResourceSpec};

/// Leader decoding; an accepted record re-encodes to the same 200 bytes.
pub fn leader(data: &[u8]) {
    if let Ok(rec) = LeaderRecord::decode(data) {
        assert_eq!(
            &rec.to_bytes()[..],
            &data[..200],
            "accepted leader re-encodes exactly"
        );
        let _ = rec.geometry();
    }
}

/// Delta-sector decoding under every geometry.
pub fn delta_sector(data: &[u8]) {
    let Some(name) = data
        .get(56..104)
        .and_then(|n| <[u8; 48]>::try_from(n).ok())
        .map(Name::from_raw)
    else {
        return;
    };
    for g in [Geometry::LEGACY_512, Geometry::LEGACY_4096] {
        if let Ok(d) = DeltaSector::decode(data, g, &name) {
            let mut out = vec![0u8; data.len().max(512)];
            d.encode_into(&mut out);
            assert_eq!(&out[..200], &data[..200]);
            assert_eq!(&out[256..512], &data[256..512]);
        }
    }
}

/// Dblock, mode block and request record decoding.
pub fn paxos_records(data: &[u8]) {
    if let Ok(d) = Dblock::decode(data) {
        if !d.is_zero() {
            assert_eq!(&d.to_bytes()[..], &data[..56]);
        }
    }
    if let Ok(m) = ModeBlock::decode_from_sector(data) {
        assert_eq!(&m.to_bytes()[..], &data[128..144]);
    }
    if let Ok(r) = RequestRecord::decode(data) {
        assert_eq!(&r.to_bytes()[..], &data[..24]);
    }
}

/// Resource-index header and entry decoding.
pub fn rindex(data: &[u8]) {
    if let Ok(h) = RindexHeader::decode(data) {
        assert_eq!(&h.to_bytes()[..], &data[..80]);
        let _ = h.geometry();
    }
    if let Ok(e) = RindexEntry::decode(data) {
        assert_eq!(&e.to_bytes()[..], &data[..64]);
    }
}

/// Area recognition and whole-area decoding of arbitrary bytes.
pub fn area(data: &[u8]) {
    let probe = identify(data);
    let _ = decode_area(0, &probe, data);
}

/// The string forms: parsers never panic, and printing what they accept parses back equal.
pub fn specs(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(ls) = LockspaceSpec::parse(text) {
        assert_eq!(LockspaceSpec::parse(&ls.to_string()).as_ref(), Ok(&ls));
    }
    if let Ok(r) = ResourceSpec::parse(text) {
        assert_eq!(ResourceSpec::parse(&r.to_string()).as_ref(), Ok(&r));
    }
    let _ = DumpTarget::parse(text);
}
