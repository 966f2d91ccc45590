//! The 200-byte leader record at the start of a sector (ONDISK.md "Leader record").
//!
//! The same layout serves delta leases (one per host id, magic [`DELTA_MAGIC`]) and paxos
//! leases (one per resource, magic [`PAXOS_MAGIC`], or [`PAXOS_CLEARED_MAGIC`] for a lease
//! that was deliberately cleared). The checksum covers bytes [0, 168); the fields after it
//! (io_timeout and the write_* fields) are not protected, which is sanlock's format, so
//! decoders must treat them as advisory.
//!
//! Invariant: [`LeaderRecord`] keeps every field, the unused ones included, so that
//! `decode(encode(x)) == x` and a foreign record is reproduced bit for bit.

use std::mem::{offset_of, size_of};

use bytemuck::{Pod, Zeroable};
use serde::Serialize;

use crate::crc::checksum;
use crate::error::DecodeError;
use crate::geometry::Geometry;
use crate::name::{Name, NAME_LEN};

/// Magic of a delta-lease (host id) leader.
pub const DELTA_MAGIC: u32 = 0x1221_2010;
/// Magic of a paxos-lease (resource) leader.
pub const PAXOS_MAGIC: u32 = 0x0615_2010;
/// Magic of a paxos lease that was deliberately cleared.
pub const PAXOS_CLEARED_MAGIC: u32 = 0x1128_2016;
/// Delta lease format version ("delta 3.4").
pub const DELTA_VERSION: u32 = 0x0003_0004;
/// Paxos lease format version ("paxos 6.4").
pub const PAXOS_VERSION: u32 = 0x0006_0004;
/// Mask selecting the major half of a version; only that half is compared.
pub const VERSION_MAJOR_MASK: u32 = 0xFFFF_0000;
/// Leader flag: a shared acquirer holds the leader only briefly.
pub const LEADER_FLAG_SHORT_HOLD: u32 = 0x1;
/// Size of the record in bytes.
pub const LEADER_LEN: usize = 200;
/// The checksum covers bytes [0, LEADER_CHECKSUM_END).
pub const LEADER_CHECKSUM_END: usize = 168;
/// Offset of `owner_generation` in a leader record.
pub const LEADER_OWNER_GENERATION_OFFSET: usize = offset_of!(LeaderRaw, owner_generation);
/// Offset of `timestamp` in a leader record.
pub const LEADER_TIMESTAMP_OFFSET: usize = offset_of!(LeaderRaw, timestamp);

/// On-disk layout. Fields are little-endian on disk; this struct is only ever filled from or
/// turned into bytes with explicit `to_le`/`from_le` conversions.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct LeaderRaw {
    magic: u32,
    version: u32,
    flags: u32,
    sector_size: u32,
    num_hosts: u64,
    max_hosts: u64,
    owner_id: u64,
    owner_generation: u64,
    lver: u64,
    space_name: [u8; NAME_LEN],
    resource_name: [u8; NAME_LEN],
    timestamp: u64,
    unused1: u64,
    checksum: u32,
    unused2: u16,
    io_timeout: u16,
    write_id: u64,
    write_generation: u64,
    write_timestamp: u64,
}

const _: () = {
    assert!(size_of::<LeaderRaw>() == LEADER_LEN);
    assert!(offset_of!(LeaderRaw, magic) == 0);
    assert!(offset_of!(LeaderRaw, version) == 4);
    assert!(offset_of!(LeaderRaw, flags) == 8);
    assert!(offset_of!(LeaderRaw, sector_size) == 12);
    assert!(offset_of!(LeaderRaw, num_hosts) == 16);
    assert!(offset_of!(LeaderRaw, max_hosts) == 24);
    assert!(offset_of!(LeaderRaw, owner_id) == 32);
    assert!(offset_of!(LeaderRaw, owner_generation) == 40);
    assert!(offset_of!(LeaderRaw, lver) == 48);
    assert!(offset_of!(LeaderRaw, space_name) == 56);
    assert!(offset_of!(LeaderRaw, resource_name) == 104);
    assert!(offset_of!(LeaderRaw, timestamp) == 152);
    assert!(offset_of!(LeaderRaw, unused1) == 160);
    assert!(offset_of!(LeaderRaw, checksum) == LEADER_CHECKSUM_END);
    assert!(offset_of!(LeaderRaw, unused2) == 172);
    assert!(offset_of!(LeaderRaw, io_timeout) == 174);
    assert!(offset_of!(LeaderRaw, write_id) == 176);
    assert!(offset_of!(LeaderRaw, write_generation) == 184);
    assert!(offset_of!(LeaderRaw, write_timestamp) == 192);
};

/// Which kind of leader a magic number announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaderKind {
    /// Delta lease (lockspace slot).
    Delta,
    /// Paxos lease (resource).
    Paxos,
    /// Paxos lease deliberately cleared.
    PaxosCleared,
}

impl LeaderKind {
    /// The kind announced by `magic`, if any.
    pub const fn from_magic(magic: u32) -> Option<Self> {
        match magic {
            DELTA_MAGIC => Some(LeaderKind::Delta),
            PAXOS_MAGIC => Some(LeaderKind::Paxos),
            PAXOS_CLEARED_MAGIC => Some(LeaderKind::PaxosCleared),
            _ => None,
        }
    }

    /// The magic written for this kind.
    pub const fn magic(self) -> u32 {
        match self {
            LeaderKind::Delta => DELTA_MAGIC,
            LeaderKind::Paxos => PAXOS_MAGIC,
            LeaderKind::PaxosCleared => PAXOS_CLEARED_MAGIC,
        }
    }

    /// The version this kind is written with.
    pub const fn version(self) -> u32 {
        match self {
            LeaderKind::Delta => DELTA_VERSION,
            LeaderKind::Paxos | LeaderKind::PaxosCleared => PAXOS_VERSION,
        }
    }
}

/// A decoded leader record, every field as on disk (integers converted from little-endian).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct LeaderRecord {
    /// Magic number.
    pub magic: u32,
    /// Format version.
    pub version: u32,
    /// Align flag, SHORT_HOLD.
    pub flags: u32,
    /// Sector size in bytes.
    pub sector_size: u32,
    /// Delta: 0. Paxos: dblocks that take part in ballots.
    pub num_hosts: u64,
    /// Delta: 1. Paxos: host ids the area has room for.
    pub max_hosts: u64,
    /// Delta: this slot's host id. Paxos: owner host id.
    pub owner_id: u64,
    /// Delta: +1 per join. Paxos: owner's lockspace generation.
    pub owner_generation: u64,
    /// Paxos lease version.
    pub lver: u64,
    /// Lockspace name.
    pub space_name: Name,
    /// Delta: holder's host name. Paxos: resource name.
    pub resource_name: Name,
    /// Writer's monotonic seconds; 0 = free.
    pub timestamp: u64,
    /// Unused (kept for exact reproduction).
    pub unused1: u64,
    /// Checksum as stored (ignored by [`LeaderRecord::encode_into`], which computes it).
    pub checksum: u32,
    /// Unused (kept for exact reproduction).
    pub unused2: u16,
    /// Delta: holder's io_timeout in seconds. Not covered by the checksum.
    pub io_timeout: u16,
    /// Delta: host-event field. Paxos: host id that wrote this leader.
    pub write_id: u64,
    /// Delta: host-event field. Paxos: writer's generation.
    pub write_generation: u64,
    /// Delta: host-event field. Paxos: writer's monotonic seconds.
    pub write_timestamp: u64,
}

impl LeaderRecord {
    /// A free delta-lease slot as `format` writes it.
    pub fn new_delta_free(geometry: Geometry, space_name: Name, io_timeout_s: u16) -> Self {
        LeaderRecord {
            magic: DELTA_MAGIC,
            version: DELTA_VERSION,
            flags: geometry.align().leader_flag(),
            sector_size: geometry.sector_size_bytes(),
            num_hosts: 0,
            max_hosts: 1,
            owner_id: 0,
            owner_generation: 0,
            lver: 0,
            space_name,
            resource_name: Name::EMPTY,
            timestamp: 0,
            unused1: 0,
            checksum: 0,
            unused2: 0,
            io_timeout: io_timeout_s,
            write_id: 0,
            write_generation: 0,
            write_timestamp: 0,
        }
    }

    /// A free paxos-lease leader as `format` writes it. `num_hosts` must be in
    /// 1..=geometry.hosts_max() (asserted: the caller validates user input first).
    pub fn new_paxos_free(
        geometry: Geometry,
        space_name: Name,
        resource_name: Name,
        num_hosts: u64,
    ) -> Self {
        assert!(
            (1..=geometry.hosts_max()).contains(&num_hosts),
            "num_hosts {num_hosts} out of range"
        );
        LeaderRecord {
            magic: PAXOS_MAGIC,
            version: PAXOS_VERSION,
            flags: geometry.align().leader_flag(),
            sector_size: geometry.sector_size_bytes(),
            num_hosts,
            max_hosts: geometry.hosts_max(),
            owner_id: 0,
            owner_generation: 0,
            lver: 0,
            space_name,
            resource_name,
            timestamp: 0,
            unused1: 0,
            checksum: 0,
            unused2: 0,
            io_timeout: 0,
            write_id: 0,
            write_generation: 0,
            write_timestamp: 0,
        }
    }

    /// The kind announced by the magic, if it is a leader magic at all.
    pub fn kind(&self) -> Option<LeaderKind> {
        LeaderKind::from_magic(self.magic)
    }

    /// The geometry recorded in `sector_size` and the align bits of `flags`.
    pub fn geometry(&self) -> Result<Geometry, DecodeError> {
        Ok(Geometry::from_leader_fields(self.sector_size, self.flags)?)
    }

    fn to_raw(self) -> LeaderRaw {
        LeaderRaw {
            magic: self.magic.to_le(),
            version: self.version.to_le(),
            flags: self.flags.to_le(),
            sector_size: self.sector_size.to_le(),
            num_hosts: self.num_hosts.to_le(),
            max_hosts: self.max_hosts.to_le(),
            owner_id: self.owner_id.to_le(),
            owner_generation: self.owner_generation.to_le(),
            lver: self.lver.to_le(),
            space_name: *self.space_name.raw(),
            resource_name: *self.resource_name.raw(),
            timestamp: self.timestamp.to_le(),
            unused1: self.unused1.to_le(),
            checksum: self.checksum.to_le(),
            unused2: self.unused2.to_le(),
            io_timeout: self.io_timeout.to_le(),
            write_id: self.write_id.to_le(),
            write_generation: self.write_generation.to_le(),
            write_timestamp: self.write_timestamp.to_le(),
        }
    }

    fn from_raw(raw: LeaderRaw) -> Self {
        LeaderRecord {
            magic: u32::from_le(raw.magic),
            version: u32::from_le(raw.version),
            flags: u32::from_le(raw.flags),
            sector_size: u32::from_le(raw.sector_size),
            num_hosts: u64::from_le(raw.num_hosts),
            max_hosts: u64::from_le(raw.max_hosts),
            owner_id: u64::from_le(raw.owner_id),
            owner_generation: u64::from_le(raw.owner_generation),
            lver: u64::from_le(raw.lver),
            space_name: Name::from_raw(raw.space_name),
            resource_name: Name::from_raw(raw.resource_name),
            timestamp: u64::from_le(raw.timestamp),
            unused1: u64::from_le(raw.unused1),
            checksum: u32::from_le(raw.checksum),
            unused2: u16::from_le(raw.unused2),
            io_timeout: u16::from_le(raw.io_timeout),
            write_id: u64::from_le(raw.write_id),
            write_generation: u64::from_le(raw.write_generation),
            write_timestamp: u64::from_le(raw.write_timestamp),
        }
    }

    /// The record's 200 bytes with the checksum computed over bytes [0, 168).
    pub fn to_bytes(&self) -> [u8; LEADER_LEN] {
        let mut bytes: [u8; LEADER_LEN] = bytemuck::cast(self.to_raw());
        let sum = checksum(&bytes[..LEADER_CHECKSUM_END]);
        bytes[LEADER_CHECKSUM_END..LEADER_CHECKSUM_END + 4].copy_from_slice(&sum.to_le_bytes());
        bytes
    }

    /// Writes the record (with a freshly computed checksum) at the start of `sector` and
    /// leaves the other bytes alone. `sector` must hold at least 200 bytes (asserted).
    pub fn encode_into(&self, sector: &mut [u8]) {
        assert!(
            sector.len() >= LEADER_LEN,
            "sector buffer of {} bytes",
            sector.len()
        );
        sector[..LEADER_LEN].copy_from_slice(&self.to_bytes());
    }

    /// The fields of the first 200 bytes, with no check at all (for showing damaged records).
    pub fn decode_unchecked(bytes: &[u8]) -> Result<Self, DecodeError> {
        let head = bytes.get(..LEADER_LEN).ok_or(DecodeError::Short {
            needed: LEADER_LEN,
            found: bytes.len(),
        })?;
        Ok(Self::from_raw(bytemuck::pod_read_unaligned(head)))
    }

    /// Decodes and checks magic (any leader kind), major version and checksum.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let rec = Self::decode_unchecked(bytes)?;
        let kind = LeaderKind::from_magic(rec.magic).ok_or(DecodeError::BadMagic {
            found: rec.magic,
            expected: "a leader magic (0x12212010 delta, 0x06152010 paxos, 0x11282016 cleared)",
        })?;
        let expected_major = kind.version() & VERSION_MAJOR_MASK;
        if rec.version & VERSION_MAJOR_MASK != expected_major {
            return Err(DecodeError::BadVersion {
                found: rec.version,
                expected_major,
            });
        }
        let computed = checksum(&bytes[..LEADER_CHECKSUM_END]);
        if computed != rec.checksum {
            return Err(DecodeError::BadChecksum {
                stored: rec.checksum,
                computed,
            });
        }
        Ok(rec)
    }

    /// Decodes a record that must be of `kind`, then checks it belongs to an area of
    /// `geometry` in lockspace `space_name` (and, for resources, is named `resource_name`).
    pub fn decode_expect(
        bytes: &[u8],
        kind: LeaderKind,
        geometry: Geometry,
        space_name: &Name,
        resource_name: Option<&Name>,
    ) -> Result<Self, DecodeError> {
        let rec = Self::decode(bytes)?;
        if rec.magic != kind.magic() {
            return Err(DecodeError::BadMagic {
                found: rec.magic,
                expected: match kind {
                    LeaderKind::Delta => "delta lease 0x12212010",
                    LeaderKind::Paxos => "paxos lease 0x06152010",
                    LeaderKind::PaxosCleared => "cleared paxos lease 0x11282016",
                },
            });
        }
        rec.check_area(geometry, space_name, resource_name)?;
        Ok(rec)
    }

    /// Checks sector size, host counts and names against the area this record was read from.
    pub fn check_area(
        &self,
        geometry: Geometry,
        space_name: &Name,
        resource_name: Option<&Name>,
    ) -> Result<(), DecodeError> {
        if self.sector_size != geometry.sector_size_bytes() {
            return Err(DecodeError::SectorSizeMismatch {
                found: self.sector_size,
                expected: geometry.sector_size_bytes(),
            });
        }
        if self.kind() != Some(LeaderKind::Delta) {
            let hosts_max = geometry.hosts_max();
            if self.num_hosts == 0 || self.num_hosts > self.max_hosts || self.max_hosts > hosts_max
            {
                return Err(DecodeError::NumHosts {
                    num_hosts: self.num_hosts,
                    max_hosts: self.max_hosts,
                    geometry,
                    hosts_max,
                });
            }
        }
        if &self.space_name != space_name {
            return Err(DecodeError::LockspaceNameMismatch {
                expected: *space_name,
                found: self.space_name,
            });
        }
        if let Some(expected) = resource_name {
            if &self.resource_name != expected {
                return Err(DecodeError::ResourceNameMismatch {
                    expected: *expected,
                    found: self.resource_name,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sector 0 of a lockspace written by `sanlock direct init -s LS:0:DEV:0` (3.8.5, 512/1M).
    fn sanlock_free_slot() -> [u8; 512] {
        let mut s = [0u8; 512];
        s[0..16].copy_from_slice(&[
            0x10, 0x20, 0x21, 0x12, 0x04, 0, 0x03, 0, 0x10, 0, 0, 0, 0, 0x02, 0, 0,
        ]);
        s[24] = 1;
        s[56..58].copy_from_slice(b"LS");
        s[168..172].copy_from_slice(&[0xc0, 0x74, 0xf1, 0xb0]);
        s[174] = 0x0a;
        s
    }

    #[test]
    fn golden_free_slot_decodes_and_reencodes() {
        let sector = sanlock_free_slot();
        let rec = LeaderRecord::decode(&sector).unwrap();
        assert_eq!(rec.kind(), Some(LeaderKind::Delta));
        assert_eq!(rec.io_timeout, 10);
        assert_eq!(rec.max_hosts, 1);
        assert_eq!(rec.space_name.as_bytes(), b"LS");
        assert_eq!(rec.geometry().unwrap(), Geometry::LEGACY_512);
        let ours = LeaderRecord::new_delta_free(Geometry::LEGACY_512, Name::new("LS").unwrap(), 10);
        let mut buf = [0u8; 512];
        ours.encode_into(&mut buf);
        assert_eq!(buf, sector);
    }

    #[test]
    fn checks() {
        let mut sector = sanlock_free_slot();
        sector[40] ^= 1;
        assert!(matches!(
            LeaderRecord::decode(&sector),
            Err(DecodeError::BadChecksum { .. })
        ));
        let mut sector = sanlock_free_slot();
        sector[6] = 4;
        assert!(matches!(
            LeaderRecord::decode(&sector),
            Err(DecodeError::BadVersion { .. })
        ));
        let sector = sanlock_free_slot();
        let r = LeaderRecord::decode_expect(
            &sector,
            LeaderKind::Paxos,
            Geometry::LEGACY_512,
            &Name::new("LS").unwrap(),
            None,
        );
        assert!(matches!(
            r,
            Err(DecodeError::BadMagic {
                found: DELTA_MAGIC,
                ..
            })
        ));
        let r = LeaderRecord::decode_expect(
            &sector,
            LeaderKind::Delta,
            Geometry::LEGACY_512,
            &Name::new("OTHER").unwrap(),
            None,
        );
        assert!(matches!(r, Err(DecodeError::LockspaceNameMismatch { .. })));
        let r = LeaderRecord::decode_expect(
            &sector,
            LeaderKind::Delta,
            Geometry::LEGACY_4096,
            &Name::new("LS").unwrap(),
            None,
        );
        assert!(matches!(
            r,
            Err(DecodeError::SectorSizeMismatch {
                found: 512,
                expected: 4096
            })
        ));
        assert!(matches!(
            LeaderRecord::decode(&sector[..100]),
            Err(DecodeError::Short { .. })
        ));
    }
}
