//! A delta-lease sector: the host's leader record plus, at bytes 256..512, the 2048-bit host
//! bitmap through which a host tells others it has a request or event for them.
//!
//! Invariant: only host N writes sector N-1 of a lockspace. Renewals write the bitmap; join
//! and release write the leader alone, which zeroes the bitmap.

use serde::Serialize;

use crate::error::DecodeError;
use crate::geometry::{Geometry, HOSTS_MAX};
use crate::leader::{
    LeaderKind, LeaderRecord, LEADER_LEN, LEADER_OWNER_GENERATION_OFFSET, LEADER_TIMESTAMP_OFFSET,
};
use crate::name::Name;

/// Byte offset of the host bitmap inside a delta-lease sector.
pub const HOST_BITMAP_OFFSET: usize = 256;
/// Size of the host bitmap in bytes.
pub const HOST_BITMAP_LEN: usize = 256;

const _: () = assert!(LEADER_LEN <= HOST_BITMAP_OFFSET);
const _: () = assert!(HOST_BITMAP_OFFSET + HOST_BITMAP_LEN <= 512);
const _: () = assert!(HOSTS_MAX as usize <= HOST_BITMAP_LEN * 8);

/// The host bitmap: bit for host M at byte (M-1)/8, bit (M-1)%8.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HostBitmap([u8; HOST_BITMAP_LEN]);

impl Default for HostBitmap {
    fn default() -> Self {
        HostBitmap([0; HOST_BITMAP_LEN])
    }
}

impl std::fmt::Debug for HostBitmap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl Serialize for HostBitmap {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl HostBitmap {
    /// Bitmap from the raw 256 bytes.
    pub const fn from_raw(raw: [u8; HOST_BITMAP_LEN]) -> Self {
        HostBitmap(raw)
    }

    /// The raw bytes.
    pub const fn raw(&self) -> &[u8; HOST_BITMAP_LEN] {
        &self.0
    }

    fn position(host_id: u64) -> (usize, u8) {
        assert!(
            (1..=HOSTS_MAX).contains(&host_id),
            "host id {host_id} out of range"
        );
        // Cannot truncate: host_id <= 2000 (asserted above).
        let bit = (host_id - 1) as usize;
        (bit / 8, 1u8 << (bit % 8))
    }

    /// Is host `host_id`'s bit set? `host_id` in 1..=2000 (asserted).
    pub fn get(&self, host_id: u64) -> bool {
        let (byte, mask) = Self::position(host_id);
        self.0[byte] & mask != 0
    }

    /// Sets or clears host `host_id`'s bit. `host_id` in 1..=2000 (asserted).
    pub fn set(&mut self, host_id: u64, on: bool) {
        let (byte, mask) = Self::position(host_id);
        if on {
            self.0[byte] |= mask;
        } else {
            self.0[byte] &= !mask;
        }
    }

    /// Host ids whose bits are set, ascending. Bits beyond host 2000 (which no valid writer
    /// sets) are reported too, so that damage is visible.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.0.iter().enumerate().flat_map(|(i, &byte)| {
            (0..8u64)
                .filter(move |b| byte & (1 << b) != 0)
                .map(move |b| (i as u64) * 8 + b + 1)
        })
    }

    /// True when no bit is set.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|&b| b == 0)
    }
}

/// A decoded delta-lease sector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct DeltaSector {
    /// The slot's leader record.
    pub leader: LeaderRecord,
    /// The host bitmap (not covered by any checksum).
    pub bitmap: HostBitmap,
}

impl DeltaSector {
    /// Writes leader and bitmap into a zeroed sector buffer of `sector.len()` bytes (at least
    /// 512, asserted).
    pub fn encode_into(&self, sector: &mut [u8]) {
        assert!(
            sector.len() >= 512,
            "sector buffer of {} bytes",
            sector.len()
        );
        sector.fill(0);
        self.leader.encode_into(sector);
        sector[HOST_BITMAP_OFFSET..HOST_BITMAP_OFFSET + HOST_BITMAP_LEN]
            .copy_from_slice(self.bitmap.raw());
    }

    /// Decodes a sector of a lockspace of `geometry` named `space_name` and checks magic,
    /// version, checksum, sector size and name.
    pub fn decode(
        sector: &[u8],
        geometry: Geometry,
        space_name: &Name,
    ) -> Result<Self, DecodeError> {
        if sector.len() < 512 {
            return Err(DecodeError::Short {
                needed: 512,
                found: sector.len(),
            });
        }
        let leader =
            LeaderRecord::decode_expect(sector, LeaderKind::Delta, geometry, space_name, None)?;
        Ok(DeltaSector {
            leader,
            bitmap: Self::bitmap_of(sector),
        })
    }

    /// Host `host_id`'s bit in the bitmap of a sector of at least 512 bytes, read in place
    /// (`host_id` in 1..=2000; both asserted).
    pub fn bit_of(sector: &[u8], host_id: u64) -> bool {
        let (byte, mask) = HostBitmap::position(host_id);
        sector[HOST_BITMAP_OFFSET + byte] & mask != 0
    }

    /// The record's timestamp and owner generation are both zero, read in place without any
    /// check: a slot no host joined. (Whether it decodes or not, it says nothing of a host.)
    pub fn never_joined(sector: &[u8]) -> bool {
        let zero = |at: usize| {
            sector
                .get(at..at + 8)
                .is_some_and(|b| b.iter().all(|&x| x == 0))
        };
        zero(LEADER_OWNER_GENERATION_OFFSET) && zero(LEADER_TIMESTAMP_OFFSET)
    }

    /// The bitmap bytes of a sector of at least 512 bytes (asserted).
    pub fn bitmap_of(sector: &[u8]) -> HostBitmap {
        let mut raw = [0u8; HOST_BITMAP_LEN];
        raw.copy_from_slice(&sector[HOST_BITMAP_OFFSET..HOST_BITMAP_OFFSET + HOST_BITMAP_LEN]);
        HostBitmap(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_positions() {
        let mut b = HostBitmap::default();
        b.set(1, true);
        b.set(9, true);
        b.set(2000, true);
        assert_eq!(b.raw()[0], 1);
        assert_eq!(b.raw()[1], 1);
        assert_eq!(b.raw()[249], 0x80);
        assert_eq!(b.iter().collect::<Vec<_>>(), vec![1, 9, 2000]);
        b.set(9, false);
        assert!(!b.get(9));
        assert!(b.get(2000));
    }

    #[test]
    fn sector_round_trip() {
        let mut leader =
            LeaderRecord::new_delta_free(Geometry::LEGACY_4096, Name::new("ls").unwrap(), 10);
        leader.owner_id = 3;
        leader.timestamp = 77;
        let mut bitmap = HostBitmap::default();
        bitmap.set(5, true);
        let s = DeltaSector { leader, bitmap };
        let mut buf = vec![0u8; 4096];
        s.encode_into(&mut buf);
        let mut back =
            DeltaSector::decode(&buf, Geometry::LEGACY_4096, &Name::new("ls").unwrap()).unwrap();
        back.leader.checksum = 0;
        assert_eq!(back, s);
        assert!(buf[512..].iter().all(|&b| b == 0));
    }
}
