//! Records of a resource area besides its leader: the request record (sector 1), each host's
//! dblock (sector host_id + 1, byte 0) and mode block (same sector, byte 128).
//!
//! Invariants: a dblock's checksum covers bytes [0, 48); an all-zero dblock is valid without
//! one. The request record and mode block carry no checksum, so damage to their fields after
//! the magic cannot be detected (sanlock's format).

use std::mem::{offset_of, size_of};

use bytemuck::{Pod, Zeroable};
use serde::Serialize;

use crate::crc::checksum;
use crate::error::DecodeError;
use crate::leader::VERSION_MAJOR_MASK;

/// Magic of the request record.
pub const REQUEST_MAGIC: u32 = 0x0829_2011;
/// Version of the request record.
pub const REQUEST_VERSION: u32 = 0x0001_0001;
/// Request mode: kill the holder at once.
pub const FORCE_MODE_FORCE: u32 = 1;
/// Request mode: ask the holder to exit (kill path or SIGTERM).
pub const FORCE_MODE_GRACEFUL: u32 = 2;
/// Dblock flag: this host released the lease.
pub const DBLOCK_FLAG_RELEASED: u32 = 0x1;
/// Mode block flag: held shared.
pub const MODE_FLAG_SHARED: u32 = 0x1;
/// Byte offset of the mode block in a dblock sector.
pub const MODE_BLOCK_OFFSET: usize = 128;
/// Size of the request record.
pub const REQUEST_LEN: usize = 24;
/// Size of a dblock.
pub const DBLOCK_LEN: usize = 56;
/// The dblock checksum covers bytes [0, DBLOCK_CHECKSUM_END).
pub const DBLOCK_CHECKSUM_END: usize = 48;
/// Size of a mode block.
pub const MODE_BLOCK_LEN: usize = 16;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct RequestRaw {
    magic: u32,
    version: u32,
    lver: u64,
    force_mode: u32,
    unused: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct DblockRaw {
    mbal: u64,
    bal: u64,
    inp: u64,
    inp2: u64,
    inp3: u64,
    lver: u64,
    checksum: u32,
    flags: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ModeBlockRaw {
    flags: u32,
    unused: u32,
    generation: u64,
}

const _: () = {
    assert!(size_of::<RequestRaw>() == REQUEST_LEN);
    assert!(offset_of!(RequestRaw, version) == 4);
    assert!(offset_of!(RequestRaw, lver) == 8);
    assert!(offset_of!(RequestRaw, force_mode) == 16);
    assert!(size_of::<DblockRaw>() == DBLOCK_LEN);
    assert!(offset_of!(DblockRaw, bal) == 8);
    assert!(offset_of!(DblockRaw, inp) == 16);
    assert!(offset_of!(DblockRaw, inp2) == 24);
    assert!(offset_of!(DblockRaw, inp3) == 32);
    assert!(offset_of!(DblockRaw, lver) == 40);
    assert!(offset_of!(DblockRaw, checksum) == DBLOCK_CHECKSUM_END);
    assert!(offset_of!(DblockRaw, flags) == 52);
    assert!(size_of::<ModeBlockRaw>() == MODE_BLOCK_LEN);
    assert!(offset_of!(ModeBlockRaw, generation) == 8);
    assert!(DBLOCK_LEN <= MODE_BLOCK_OFFSET);
    assert!(MODE_BLOCK_OFFSET + MODE_BLOCK_LEN <= 512);
};

fn head<const N: usize>(bytes: &[u8]) -> Result<&[u8], DecodeError> {
    bytes.get(..N).ok_or(DecodeError::Short {
        needed: N,
        found: bytes.len(),
    })
}

/// The request record (sector 1 of a resource area).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct RequestRecord {
    /// Magic.
    pub magic: u32,
    /// Version.
    pub version: u32,
    /// Requests apply to holders of a lease version below this.
    pub lver: u64,
    /// 0 none, 1 FORCE, 2 GRACEFUL.
    pub force_mode: u32,
    /// Unused (kept for exact reproduction).
    pub unused: u32,
}

impl RequestRecord {
    /// The record `format` writes: magic and version, no request.
    pub const FORMATTED: RequestRecord = RequestRecord {
        magic: REQUEST_MAGIC,
        version: REQUEST_VERSION,
        lver: 0,
        force_mode: 0,
        unused: 0,
    };

    /// The record's bytes.
    pub fn to_bytes(&self) -> [u8; REQUEST_LEN] {
        bytemuck::cast(RequestRaw {
            magic: self.magic.to_le(),
            version: self.version.to_le(),
            lver: self.lver.to_le(),
            force_mode: self.force_mode.to_le(),
            unused: self.unused.to_le(),
        })
    }

    /// Writes the record at the start of `sector` (at least 24 bytes, asserted).
    pub fn encode_into(&self, sector: &mut [u8]) {
        sector[..REQUEST_LEN].copy_from_slice(&self.to_bytes());
    }

    /// Decodes and checks magic and major version.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let raw: RequestRaw = bytemuck::pod_read_unaligned(head::<REQUEST_LEN>(bytes)?);
        let rec = RequestRecord {
            magic: u32::from_le(raw.magic),
            version: u32::from_le(raw.version),
            lver: u64::from_le(raw.lver),
            force_mode: u32::from_le(raw.force_mode),
            unused: u32::from_le(raw.unused),
        };
        if rec.magic != REQUEST_MAGIC {
            return Err(DecodeError::BadMagic {
                found: rec.magic,
                expected: "request record 0x08292011",
            });
        }
        if rec.version & VERSION_MAJOR_MASK != REQUEST_VERSION & VERSION_MAJOR_MASK {
            return Err(DecodeError::BadVersion {
                found: rec.version,
                expected_major: REQUEST_VERSION & VERSION_MAJOR_MASK,
            });
        }
        Ok(rec)
    }
}

/// One host's ballot state for a resource (Disk Paxos "dblock").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Dblock {
    /// Ballot this host has started (promised).
    pub mbal: u64,
    /// Ballot in which `inp` was last written.
    pub bal: u64,
    /// Proposed owner host id.
    pub inp: u64,
    /// Proposed owner generation.
    pub inp2: u64,
    /// Proposed owner timestamp.
    pub inp3: u64,
    /// Lease version this ballot is for.
    pub lver: u64,
    /// Checksum as stored (ignored by encoding, which computes it).
    pub checksum: u32,
    /// RELEASED 0x1. Not covered by the checksum.
    pub flags: u32,
}

impl Dblock {
    /// True for the all-zero dblock a format leaves, which is valid without a checksum.
    pub fn is_zero(&self) -> bool {
        *self == Dblock::default()
    }

    /// The dblock's bytes with its checksum computed.
    pub fn to_bytes(&self) -> [u8; DBLOCK_LEN] {
        let mut bytes: [u8; DBLOCK_LEN] = bytemuck::cast(DblockRaw {
            mbal: self.mbal.to_le(),
            bal: self.bal.to_le(),
            inp: self.inp.to_le(),
            inp2: self.inp2.to_le(),
            inp3: self.inp3.to_le(),
            lver: self.lver.to_le(),
            checksum: 0,
            flags: self.flags.to_le(),
        });
        let sum = checksum(&bytes[..DBLOCK_CHECKSUM_END]);
        bytes[DBLOCK_CHECKSUM_END..DBLOCK_CHECKSUM_END + 4].copy_from_slice(&sum.to_le_bytes());
        bytes
    }

    /// Writes the dblock at the start of `sector` (at least 56 bytes, asserted).
    pub fn encode_into(&self, sector: &mut [u8]) {
        sector[..DBLOCK_LEN].copy_from_slice(&self.to_bytes());
    }

    /// Fields with no check (for showing damaged records).
    pub fn decode_unchecked(bytes: &[u8]) -> Result<Self, DecodeError> {
        let raw: DblockRaw = bytemuck::pod_read_unaligned(head::<DBLOCK_LEN>(bytes)?);
        Ok(Dblock {
            mbal: u64::from_le(raw.mbal),
            bal: u64::from_le(raw.bal),
            inp: u64::from_le(raw.inp),
            inp2: u64::from_le(raw.inp2),
            inp3: u64::from_le(raw.inp3),
            lver: u64::from_le(raw.lver),
            checksum: u32::from_le(raw.checksum),
            flags: u32::from_le(raw.flags),
        })
    }

    /// Decodes and verifies the checksum unless the whole dblock is zero.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let d = Self::decode_unchecked(bytes)?;
        if d.is_zero() {
            return Ok(d);
        }
        let computed = checksum(&bytes[..DBLOCK_CHECKSUM_END]);
        if computed != d.checksum {
            return Err(DecodeError::BadChecksum {
                stored: d.checksum,
                computed,
            });
        }
        Ok(d)
    }
}

/// A host's shared-mode marker for a resource.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct ModeBlock {
    /// SHARED 0x1.
    pub flags: u32,
    /// Unused (kept for exact reproduction).
    pub unused: u32,
    /// Lockspace generation of the shared holder.
    pub generation: u64,
}

impl ModeBlock {
    /// The block's bytes.
    pub fn to_bytes(&self) -> [u8; MODE_BLOCK_LEN] {
        bytemuck::cast(ModeBlockRaw {
            flags: self.flags.to_le(),
            unused: self.unused.to_le(),
            generation: self.generation.to_le(),
        })
    }

    /// Writes the mode block at byte 128 of a dblock sector (at least 144 bytes, asserted).
    pub fn encode_into(&self, sector: &mut [u8]) {
        sector[MODE_BLOCK_OFFSET..MODE_BLOCK_OFFSET + MODE_BLOCK_LEN]
            .copy_from_slice(&self.to_bytes());
    }

    /// Reads the mode block from a dblock sector (no checksum exists to verify).
    pub fn decode_from_sector(sector: &[u8]) -> Result<Self, DecodeError> {
        let bytes = sector
            .get(MODE_BLOCK_OFFSET..MODE_BLOCK_OFFSET + MODE_BLOCK_LEN)
            .ok_or(DecodeError::Short {
                needed: MODE_BLOCK_OFFSET + MODE_BLOCK_LEN,
                found: sector.len(),
            })?;
        let raw: ModeBlockRaw = bytemuck::pod_read_unaligned(bytes);
        Ok(ModeBlock {
            flags: u32::from_le(raw.flags),
            unused: u32::from_le(raw.unused),
            generation: u64::from_le(raw.generation),
        })
    }

    /// True when held shared.
    pub fn is_shared(&self) -> bool {
        self.flags & MODE_FLAG_SHARED != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_request_record() {
        // Sector 1 of `sanlock direct init -r LS:RES:DEV:1M` (3.8.5).
        let golden = [0x11, 0x20, 0x29, 0x08, 0x01, 0x00, 0x01, 0x00];
        assert_eq!(&RequestRecord::FORMATTED.to_bytes()[..8], &golden);
        assert!(RequestRecord::FORMATTED.to_bytes()[8..]
            .iter()
            .all(|&b| b == 0));
    }

    #[test]
    fn dblock_round_trip_and_zero() {
        let d = Dblock {
            mbal: 2001,
            bal: 2001,
            inp: 1,
            inp2: 3,
            inp3: 99,
            lver: 4,
            checksum: 0,
            flags: DBLOCK_FLAG_RELEASED,
        };
        let bytes = d.to_bytes();
        let back = Dblock::decode(&bytes).unwrap();
        assert_eq!(
            Dblock {
                checksum: 0,
                ..back
            },
            d
        );
        assert!(Dblock::decode(&[0u8; 56]).unwrap().is_zero());
        let mut bad = bytes;
        bad[3] ^= 0x40;
        assert!(matches!(
            Dblock::decode(&bad),
            Err(DecodeError::BadChecksum { .. })
        ));
    }

    #[test]
    fn mode_block_position() {
        let mut sector = [0u8; 512];
        ModeBlock {
            flags: MODE_FLAG_SHARED,
            unused: 0,
            generation: 7,
        }
        .encode_into(&mut sector);
        assert_eq!(sector[128], 1);
        assert_eq!(sector[136], 7);
        assert!(ModeBlock::decode_from_sector(&sector).unwrap().is_shared());
    }
}
