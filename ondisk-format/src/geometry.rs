//! Lease-area geometry: sector size × align size → how many hosts fit (ONDISK.md "Geometry").
//!
//! Invariant: a [`Geometry`] value is always one of the five combinations sanlock accepts
//! (512/1M, 4096/1M, 4096/2M, 4096/4M, 4096/8M); every other combination is rejected when the
//! value is built, so code holding a `Geometry` never re-validates it.

use std::fmt;

use serde::Serialize;

use crate::error::GeometryError;

/// The two sector sizes sanlock understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum SectorSize {
    /// 512-byte logical sectors.
    B512,
    /// 4096-byte logical sectors.
    B4096,
}

impl SectorSize {
    /// Size in bytes.
    pub const fn bytes(self) -> u32 {
        match self {
            SectorSize::B512 => 512,
            SectorSize::B4096 => 4096,
        }
    }

    /// Parses a byte count; only 512 and 4096 are valid.
    pub fn from_bytes(bytes: u64) -> Result<Self, GeometryError> {
        match bytes {
            512 => Ok(SectorSize::B512),
            4096 => Ok(SectorSize::B4096),
            other => Err(GeometryError::SectorSize { found: other }),
        }
    }
}

/// The size of one lease area (lockspace or resource).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum AlignSize {
    /// 1 MiB.
    M1,
    /// 2 MiB.
    M2,
    /// 4 MiB.
    M4,
    /// 8 MiB.
    M8,
}

/// Leader-record flag bits that carry the align size.
pub const ALIGN_FLAG_1M: u32 = 0x10;
/// See [`ALIGN_FLAG_1M`].
pub const ALIGN_FLAG_2M: u32 = 0x20;
/// See [`ALIGN_FLAG_1M`].
pub const ALIGN_FLAG_4M: u32 = 0x40;
/// See [`ALIGN_FLAG_1M`].
pub const ALIGN_FLAG_8M: u32 = 0x80;
/// All align bits of a leader's flags.
pub const ALIGN_FLAG_MASK: u32 = ALIGN_FLAG_1M | ALIGN_FLAG_2M | ALIGN_FLAG_4M | ALIGN_FLAG_8M;

const MIB: u64 = 1024 * 1024;

impl AlignSize {
    /// Size in bytes.
    pub const fn bytes(self) -> u64 {
        match self {
            AlignSize::M1 => MIB,
            AlignSize::M2 => 2 * MIB,
            AlignSize::M4 => 4 * MIB,
            AlignSize::M8 => 8 * MIB,
        }
    }

    /// Parses a byte count (1, 2, 4 or 8 MiB).
    pub fn from_bytes(bytes: u64) -> Result<Self, GeometryError> {
        match bytes {
            b if b == MIB => Ok(AlignSize::M1),
            b if b == 2 * MIB => Ok(AlignSize::M2),
            b if b == 4 * MIB => Ok(AlignSize::M4),
            b if b == 8 * MIB => Ok(AlignSize::M8),
            other => Err(GeometryError::AlignSize { found: other }),
        }
    }

    /// The leader flag bit for this align size.
    pub const fn leader_flag(self) -> u32 {
        match self {
            AlignSize::M1 => ALIGN_FLAG_1M,
            AlignSize::M2 => ALIGN_FLAG_2M,
            AlignSize::M4 => ALIGN_FLAG_4M,
            AlignSize::M8 => ALIGN_FLAG_8M,
        }
    }

    /// The flag bit used in a resource-index header (a different encoding: 0x1/0x2/0x4/0x8).
    pub const fn rindex_flag(self) -> u32 {
        match self {
            AlignSize::M1 => 0x1,
            AlignSize::M2 => 0x2,
            AlignSize::M4 => 0x4,
            AlignSize::M8 => 0x8,
        }
    }

    /// Parses a human form: `1M`, `2M`, `4M`, `8M` (also `1m`, `1MiB`, or a byte count).
    pub fn parse(text: &str) -> Result<Self, GeometryError> {
        let t = text.trim();
        let digits = t.trim_end_matches(|c: char| c.is_ascii_alphabetic());
        let suffix = &t[digits.len()..];
        let n: u64 = digits.parse().map_err(|_| GeometryError::AlignText {
            text: text.to_owned(),
        })?;
        let bytes = match suffix {
            "" => n,
            "M" | "m" | "MiB" | "MB" => n.checked_mul(MIB).ok_or(GeometryError::AlignText {
                text: text.to_owned(),
            })?,
            _ => {
                return Err(GeometryError::AlignText {
                    text: text.to_owned(),
                })
            }
        };
        Self::from_bytes(bytes)
    }
}

impl fmt::Display for AlignSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}M", self.bytes() / MIB)
    }
}

impl fmt::Display for SectorSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.bytes())
    }
}

/// A valid sector size / align size pair. Serialised (JSON) as
/// `{"sector_size_bytes": 512, "align_bytes": 1048576, "hosts_max": 2000}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Geometry {
    sector_size: SectorSize,
    align: AlignSize,
}

/// The largest number of hosts any geometry allows (and the size of the host bitmap in bits).
pub const HOSTS_MAX: u64 = 2000;

impl Geometry {
    /// sanlock's default for 512-byte sectors.
    pub const LEGACY_512: Geometry = Geometry {
        sector_size: SectorSize::B512,
        align: AlignSize::M1,
    };
    /// sanlock's default for 4096-byte sectors.
    pub const LEGACY_4096: Geometry = Geometry {
        sector_size: SectorSize::B4096,
        align: AlignSize::M8,
    };

    /// Builds a geometry; 512-byte sectors allow only 1 MiB areas.
    pub fn new(sector_size: SectorSize, align: AlignSize) -> Result<Self, GeometryError> {
        if sector_size == SectorSize::B512 && align != AlignSize::M1 {
            return Err(GeometryError::Combination {
                sector_size_bytes: 512,
                align_bytes: align.bytes(),
            });
        }
        Ok(Geometry { sector_size, align })
    }

    /// The default align size for a sector size when none is given (and when a leader carries
    /// no align flag, as very old versions wrote): 512 → 1 MiB, 4096 → 8 MiB.
    pub const fn legacy(sector_size: SectorSize) -> Self {
        match sector_size {
            SectorSize::B512 => Self::LEGACY_512,
            SectorSize::B4096 => Self::LEGACY_4096,
        }
    }

    /// Geometry recorded in a leader's `sector_size` and `flags` fields.
    pub fn from_leader_fields(sector_size_bytes: u32, flags: u32) -> Result<Self, GeometryError> {
        let sector_size = SectorSize::from_bytes(u64::from(sector_size_bytes))?;
        let align = match flags & ALIGN_FLAG_MASK {
            0 => return Ok(Self::legacy(sector_size)),
            ALIGN_FLAG_1M => AlignSize::M1,
            ALIGN_FLAG_2M => AlignSize::M2,
            ALIGN_FLAG_4M => AlignSize::M4,
            ALIGN_FLAG_8M => AlignSize::M8,
            bits => return Err(GeometryError::AlignFlags { flags: bits }),
        };
        Self::new(sector_size, align)
    }

    /// Sector size.
    pub const fn sector_size(self) -> SectorSize {
        self.sector_size
    }

    /// Sector size in bytes.
    pub const fn sector_size_bytes(self) -> u32 {
        self.sector_size.bytes()
    }

    /// Align size.
    pub const fn align(self) -> AlignSize {
        self.align
    }

    /// Area size in bytes.
    pub const fn area_bytes(self) -> u64 {
        self.align.bytes()
    }

    /// Number of sectors in one area.
    pub const fn area_sectors(self) -> u64 {
        self.align.bytes() / self.sector_size.bytes() as u64
    }

    /// Host ids 1..=hosts_max fit in this geometry (sanlock's table).
    pub const fn hosts_max(self) -> u64 {
        match (self.sector_size, self.align) {
            (SectorSize::B512, _) => 2000,
            (SectorSize::B4096, AlignSize::M1) => 250,
            (SectorSize::B4096, AlignSize::M2) => 500,
            (SectorSize::B4096, AlignSize::M4) => 1000,
            (SectorSize::B4096, AlignSize::M8) => 2000,
        }
    }

    /// Byte offset, inside a resource area, of the sector holding `host_id`'s dblock.
    /// `host_id` must be in 1..=hosts_max (asserted: callers validate external ids first).
    pub fn dblock_offset(self, host_id: u64) -> u64 {
        assert!(
            (1..=self.hosts_max()).contains(&host_id),
            "host id {host_id} out of range"
        );
        (host_id + 1) * u64::from(self.sector_size_bytes())
    }

    /// Byte offset of the lock value block inside a resource area, or an error when sector
    /// 2002 lies outside the area (4096-byte sectors with align below 8 MiB, as observed in
    /// sanlock 3.8.5): tenure refuses LVB use there rather than write outside the area.
    pub fn lvb_offset(self) -> Result<u64, GeometryError> {
        let offset = LVB_SECTOR * u64::from(self.sector_size_bytes());
        if offset + u64::from(self.sector_size_bytes()) > self.area_bytes() {
            return Err(GeometryError::LvbOutsideArea {
                geometry: self,
                lvb_offset_bytes: offset,
            });
        }
        Ok(offset)
    }

    /// Byte offset of host `host_id`'s delta-lease sector inside a lockspace area.
    pub fn delta_slot_offset(self, host_id: u64) -> u64 {
        assert!(
            (1..=self.hosts_max()).contains(&host_id),
            "host id {host_id} out of range"
        );
        (host_id - 1) * u64::from(self.sector_size_bytes())
    }
}

impl Serialize for Geometry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Geometry", 3)?;
        st.serialize_field("sector_size_bytes", &self.sector_size_bytes())?;
        st.serialize_field("align_bytes", &self.area_bytes())?;
        st.serialize_field("hosts_max", &self.hosts_max())?;
        st.end()
    }
}

/// Sector index of the lock value block in a resource area.
pub const LVB_SECTOR: u64 = 2002;

impl fmt::Display for Geometry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.sector_size, self.align)
    }
}

// Every dblock sector (host ids up to hosts_max, at sector host_id + 1) fits in its area.
const _: () = {
    let all = [
        (512u64, 1u64, 2000u64),
        (4096, 1, 250),
        (4096, 2, 500),
        (4096, 4, 1000),
        (4096, 8, 2000),
    ];
    let mut i = 0;
    while i < all.len() {
        let (sector, mib, hosts) = all[i];
        assert!((hosts + 2) * sector <= mib * MIB);
        assert!(hosts <= HOSTS_MAX);
        i += 1;
    }
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let g = |s, a| Geometry::new(s, a).unwrap();
        assert_eq!(g(SectorSize::B512, AlignSize::M1).hosts_max(), 2000);
        assert_eq!(g(SectorSize::B4096, AlignSize::M1).hosts_max(), 250);
        assert_eq!(g(SectorSize::B4096, AlignSize::M2).hosts_max(), 500);
        assert_eq!(g(SectorSize::B4096, AlignSize::M4).hosts_max(), 1000);
        assert_eq!(g(SectorSize::B4096, AlignSize::M8).hosts_max(), 2000);
        assert!(Geometry::new(SectorSize::B512, AlignSize::M2).is_err());
        assert!(Geometry::new(SectorSize::B512, AlignSize::M8).is_err());
    }

    #[test]
    fn legacy_defaults_and_flags() {
        assert_eq!(
            Geometry::from_leader_fields(512, 0).unwrap(),
            Geometry::LEGACY_512
        );
        assert_eq!(
            Geometry::from_leader_fields(4096, 0x1).unwrap(),
            Geometry::LEGACY_4096
        );
        assert_eq!(
            Geometry::from_leader_fields(4096, 0x21).unwrap().align(),
            AlignSize::M2
        );
        assert!(matches!(
            Geometry::from_leader_fields(4096, 0x30),
            Err(GeometryError::AlignFlags { flags: 0x30 })
        ));
        assert!(matches!(
            Geometry::from_leader_fields(1024, 0x10),
            Err(GeometryError::SectorSize { found: 1024 })
        ));
        assert!(Geometry::from_leader_fields(512, 0x80).is_err());
    }

    #[test]
    fn lvb_placement() {
        assert_eq!(Geometry::LEGACY_512.lvb_offset().unwrap(), 2002 * 512);
        assert_eq!(Geometry::LEGACY_4096.lvb_offset().unwrap(), 2002 * 4096);
        for a in [AlignSize::M1, AlignSize::M2, AlignSize::M4] {
            let g = Geometry::new(SectorSize::B4096, a).unwrap();
            assert!(
                matches!(g.lvb_offset(), Err(GeometryError::LvbOutsideArea { .. })),
                "{g}"
            );
        }
    }

    #[test]
    fn align_parse() {
        assert_eq!(AlignSize::parse("1M").unwrap(), AlignSize::M1);
        assert_eq!(AlignSize::parse("8m").unwrap(), AlignSize::M8);
        assert_eq!(AlignSize::parse("2097152").unwrap(), AlignSize::M2);
        assert!(AlignSize::parse("3M").is_err());
        assert!(AlignSize::parse("M").is_err());
        assert!(AlignSize::parse("99999999999999999999M").is_err());
    }
}
