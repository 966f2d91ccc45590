//! The checksum sanlock stores in leader records and dblocks.
//!
//! It is CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) with the register started at
//! 0xFFFF_FFFE and no final inversion (ONDISK.md "Checksum"). The standard CRC-32C starts at
//! 0xFFFF_FFFF and inverts at the end; `crc32c_append(c, ..)` starts from `!c` and returns the
//! inverted register, so starting from `!0xFFFF_FFFE == 1` and inverting the result gives the
//! sanlock value while keeping the crate's hardware-accelerated path.

/// sanlock's checksum of `bytes`.
pub fn checksum(bytes: &[u8]) -> u32 {
    !crc32c::crc32c_append(1, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain bitwise reference with the sanlock parameters, to pin the constant juggling above.
    fn reference(bytes: &[u8]) -> u32 {
        let mut crc: u32 = 0xFFFF_FFFE;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0x82F6_3B78
                } else {
                    crc >> 1
                };
            }
        }
        crc
    }

    #[test]
    fn matches_bitwise_reference() {
        for len in [0usize, 1, 7, 48, 168, 1000] {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(checksum(&data), reference(&data), "len {len}");
        }
    }

    #[test]
    fn golden_sanlock_free_delta_slot() {
        // First 168 bytes of a free slot written by `sanlock direct init -s LS:0:DEV:0`
        // (sanlock 3.8.5, 512/1M); read_leader reported checksum 0xb0f174c0.
        let mut rec = [0u8; 168];
        rec[0..4].copy_from_slice(&0x1221_2010u32.to_le_bytes());
        rec[4..8].copy_from_slice(&0x0003_0004u32.to_le_bytes());
        rec[8..12].copy_from_slice(&0x10u32.to_le_bytes());
        rec[12..16].copy_from_slice(&512u32.to_le_bytes());
        rec[24..32].copy_from_slice(&1u64.to_le_bytes());
        rec[56..58].copy_from_slice(b"LS");
        assert_eq!(checksum(&rec), 0xb0f1_74c0);
    }
}
