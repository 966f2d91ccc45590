//! The optional resource index (ONDISK.md "Resource index"): a header sector and 64-byte
//! entries in the first area, a paxos lease named `rindex_lease` in the second. No checksums.
//!
//! Invariant: entry N sits at `sector_size + N*64` inside the index area, and resource N's
//! lease at `rx_offset + 2*align + N*align`.

use std::mem::{offset_of, size_of};

use bytemuck::{Pod, Zeroable};
use serde::Serialize;

use crate::error::{DecodeError, GeometryError};
use crate::geometry::{AlignSize, Geometry, SectorSize};
use crate::leader::VERSION_MAJOR_MASK;
use crate::name::{Name, NAME_LEN};

/// Magic of the resource-index header.
pub const RINDEX_MAGIC: u32 = 0x0104_2018;
/// Version of the resource-index header ("rindex 1.2").
pub const RINDEX_VERSION: u32 = 0x0001_0002;
/// Default number of entries.
pub const RINDEX_MAX_RESOURCES_DEFAULT: u32 = 4096;
/// Name of the internal paxos lease in the second area.
pub const RINDEX_LEASE_NAME: &str = "rindex_lease";
/// Size of the header.
pub const RINDEX_HEADER_LEN: usize = 80;
/// Size of one entry.
pub const RINDEX_ENTRY_LEN: usize = 64;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct HeaderRaw {
    magic: u32,
    version: u32,
    flags: u32,
    sector_size: u32,
    max_resources: u32,
    unused: u32,
    rx_offset: u64,
    lockspace_name: [u8; NAME_LEN],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct EntryRaw {
    res_offset: u64,
    flags: u32,
    unused: u32,
    name: [u8; NAME_LEN],
}

const _: () = {
    assert!(size_of::<HeaderRaw>() == RINDEX_HEADER_LEN);
    assert!(offset_of!(HeaderRaw, sector_size) == 12);
    assert!(offset_of!(HeaderRaw, max_resources) == 16);
    assert!(offset_of!(HeaderRaw, rx_offset) == 24);
    assert!(offset_of!(HeaderRaw, lockspace_name) == 32);
    assert!(size_of::<EntryRaw>() == RINDEX_ENTRY_LEN);
    assert!(offset_of!(EntryRaw, flags) == 8);
    assert!(offset_of!(EntryRaw, name) == 16);
};

/// The resource-index header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct RindexHeader {
    /// Magic.
    pub magic: u32,
    /// Version.
    pub version: u32,
    /// Align flag 0x1/0x2/0x4/0x8 (1M/2M/4M/8M).
    pub flags: u32,
    /// Sector size in bytes.
    pub sector_size: u32,
    /// Number of entries.
    pub max_resources: u32,
    /// Unused (kept for exact reproduction).
    pub unused: u32,
    /// Offset of the index area itself on the device.
    pub rx_offset: u64,
    /// Lockspace name.
    pub lockspace_name: Name,
}

impl RindexHeader {
    /// The header bytes.
    pub fn to_bytes(&self) -> [u8; RINDEX_HEADER_LEN] {
        bytemuck::cast(HeaderRaw {
            magic: self.magic.to_le(),
            version: self.version.to_le(),
            flags: self.flags.to_le(),
            sector_size: self.sector_size.to_le(),
            max_resources: self.max_resources.to_le(),
            unused: self.unused.to_le(),
            rx_offset: self.rx_offset.to_le(),
            lockspace_name: *self.lockspace_name.raw(),
        })
    }

    /// Decodes and checks magic and major version.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let head = bytes.get(..RINDEX_HEADER_LEN).ok_or(DecodeError::Short {
            needed: RINDEX_HEADER_LEN,
            found: bytes.len(),
        })?;
        let raw: HeaderRaw = bytemuck::pod_read_unaligned(head);
        let h = RindexHeader {
            magic: u32::from_le(raw.magic),
            version: u32::from_le(raw.version),
            flags: u32::from_le(raw.flags),
            sector_size: u32::from_le(raw.sector_size),
            max_resources: u32::from_le(raw.max_resources),
            unused: u32::from_le(raw.unused),
            rx_offset: u64::from_le(raw.rx_offset),
            lockspace_name: Name::from_raw(raw.lockspace_name),
        };
        if h.magic != RINDEX_MAGIC {
            return Err(DecodeError::BadMagic {
                found: h.magic,
                expected: "resource index 0x01042018",
            });
        }
        if h.version & VERSION_MAJOR_MASK != RINDEX_VERSION & VERSION_MAJOR_MASK {
            return Err(DecodeError::BadVersion {
                found: h.version,
                expected_major: RINDEX_VERSION & VERSION_MAJOR_MASK,
            });
        }
        Ok(h)
    }

    /// Geometry from the sector size and the index's own align-flag encoding.
    pub fn geometry(&self) -> Result<Geometry, DecodeError> {
        let sector = SectorSize::from_bytes(u64::from(self.sector_size))?;
        let align = match self.flags & 0xF {
            0x1 => AlignSize::M1,
            0x2 => AlignSize::M2,
            0x4 => AlignSize::M4,
            0x8 => AlignSize::M8,
            bits => return Err(GeometryError::AlignFlags { flags: bits }.into()),
        };
        Ok(Geometry::new(sector, align)?)
    }

    /// Byte offset, inside the index area, of entry `n`.
    pub fn entry_offset(&self, n: u64) -> u64 {
        u64::from(self.sector_size) + n * RINDEX_ENTRY_LEN as u64
    }
}

/// One resource-index entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct RindexEntry {
    /// Device offset of the resource's lease; 0 = unused entry.
    pub res_offset: u64,
    /// Flags.
    pub flags: u32,
    /// Unused (kept for exact reproduction).
    pub unused: u32,
    /// Resource name.
    pub name: Name,
}

impl RindexEntry {
    /// The entry bytes.
    pub fn to_bytes(&self) -> [u8; RINDEX_ENTRY_LEN] {
        bytemuck::cast(EntryRaw {
            res_offset: self.res_offset.to_le(),
            flags: self.flags.to_le(),
            unused: self.unused.to_le(),
            name: *self.name.raw(),
        })
    }

    /// Decodes an entry (no checks exist in the format).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let head = bytes.get(..RINDEX_ENTRY_LEN).ok_or(DecodeError::Short {
            needed: RINDEX_ENTRY_LEN,
            found: bytes.len(),
        })?;
        let raw: EntryRaw = bytemuck::pod_read_unaligned(head);
        Ok(RindexEntry {
            res_offset: u64::from_le(raw.res_offset),
            flags: u32::from_le(raw.flags),
            unused: u32::from_le(raw.unused),
            name: Name::from_raw(raw.name),
        })
    }

    /// True for an unused entry.
    pub fn is_empty(&self) -> bool {
        self.res_offset == 0 && self.name.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_header() {
        // `sanlock direct format -x LS:DEV:4M` (3.8.5, 512-byte sectors).
        let mut golden = [0u8; 80];
        golden[..32].copy_from_slice(&[
            0x18, 0x20, 0x04, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x02,
            0x00, 0x00, //
            0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00,
            0x00, 0x00,
        ]);
        golden[32..34].copy_from_slice(b"LS");
        let h = RindexHeader::decode(&golden).unwrap();
        assert_eq!(h.max_resources, 4096);
        assert_eq!(h.rx_offset, 4 * 1024 * 1024);
        assert_eq!(h.geometry().unwrap(), Geometry::LEGACY_512);
        assert_eq!(h.to_bytes(), golden);
    }
}
