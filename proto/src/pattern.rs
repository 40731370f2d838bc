//! The test patterns that one side writes and the other checks, built on one
//! `splitmix64` (the writer log in [`crate::writer_log`] uses it too):
//!
//! - the disk sector pattern (docs/drivers.md `disk_test=`): sector `s`
//!   holds 64 little-endian u64 words
//!   `w[j] = splitmix64(seed * 0x9E3779B97F4A7C15 ^ (s * 64 + j))`
//!   (all arithmetic wrapping);
//! - the shared-memory pattern (docs/hcall-guest.md `share:<seed>`): the
//!   same words read as one byte stream, byte `i` being byte `i % 8` of
//!   word `i / 8`.
//!
//! The guest writes and checks them on disks and granted memory; lparhv and
//! the integration tests build and check the same bytes on the host.

use alloc::vec::Vec;

/// Bytes per sector.
pub const SECTOR: usize = 512;

/// The golden-ratio increment of splitmix64 (2^64 / φ).
pub const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// The splitmix64 finaliser.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(GOLDEN);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Word `j` of sector `sector` for `seed`.
pub fn word(seed: u64, sector: u64, j: u64) -> u64 {
    splitmix64(seed.wrapping_mul(GOLDEN) ^ sector.wrapping_mul(64).wrapping_add(j))
}

/// Fill `out` (a 512-byte sector) with the pattern of `sector`.
pub fn fill_sector(seed: u64, sector: u64, out: &mut [u8; SECTOR]) {
    for (j, chunk) in out.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&word(seed, sector, j as u64).to_le_bytes());
    }
}

/// Whether `data` (a 512-byte sector) holds the pattern of `sector`.
pub fn sector_matches(seed: u64, sector: u64, data: &[u8; SECTOR]) -> bool {
    data.chunks_exact(8).enumerate().all(|(j, chunk)| chunk == word(seed, sector, j as u64).to_le_bytes())
}

/// Byte `i` of the pattern read as one stream (sector after sector).
pub fn stream_byte(seed: u64, i: u64) -> u8 {
    (word(seed, i / 512, (i % 512) / 8) >> ((i % 8) * 8)) as u8
}

/// Fill `out` with the stream from byte `offset` on: the shared-memory
/// pattern of `seed`.
pub fn fill_pattern(seed: u64, offset: u64, out: &mut [u8]) {
    for (k, b) in out.iter_mut().enumerate() {
        *b = stream_byte(seed, offset + k as u64);
    }
}

/// Bytes of `data` (which starts at byte `offset` of the stream) that
/// differ from the pattern.
pub fn pattern_mismatches(seed: u64, offset: u64, data: &[u8]) -> u64 {
    data.iter().enumerate().filter(|&(k, &b)| b != stream_byte(seed, offset + k as u64)).count() as u64
}

/// The pattern of sectors `0..sectors`, as an image's bytes.
pub fn pattern_bytes(seed: u64, sectors: u64) -> Vec<u8> {
    let mut out = alloc::vec![0u8; sectors as usize * SECTOR];
    for (s, chunk) in out.chunks_exact_mut(SECTOR).enumerate() {
        let mut sector = [0u8; SECTOR];
        fill_sector(seed, s as u64, &mut sector);
        chunk.copy_from_slice(&sector);
    }
    out
}

/// Sectors among `0..sectors` of `image` that do not hold the pattern
/// (sectors past the end of `image` count as not holding it).
pub fn mismatched_sectors(seed: u64, image: &[u8], sectors: u64) -> Vec<u64> {
    (0..sectors).filter(|&s| !image_sector_matches(seed, image, s)).collect()
}

fn image_sector_matches(seed: u64, image: &[u8], sector: u64) -> bool {
    let start = sector as usize * SECTOR;
    match image.get(start..start + SECTOR).and_then(|data| <&[u8; SECTOR]>::try_from(data).ok()) {
        Some(data) => sector_matches(seed, sector, data),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_reference_values() {
        // Reference outputs of the published splitmix64 generator started
        // at state 0: next() = splitmix64(0), splitmix64(GOLDEN), ...
        assert_eq!(splitmix64(0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix64(GOLDEN), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn fixed_vector() {
        // Computed once with this implementation (and checked against an
        // independent Python transcription of the contract).
        assert_eq!(word(1, 0, 0), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(word(42, 3, 7), FIXED_42_3_7);
        let mut s = [0u8; SECTOR];
        fill_sector(42, 3, &mut s);
        assert_eq!(&s[56..64], &FIXED_42_3_7.to_le_bytes());
        assert!(sector_matches(42, 3, &s));
        assert!(!sector_matches(42, 4, &s));
        assert!(!sector_matches(43, 3, &s));
        s[100] ^= 1;
        assert!(!sector_matches(42, 3, &s));
    }

    const FIXED_42_3_7: u64 = 0x365E_93EE_EAA2_AACF;

    #[test]
    fn stream_bytes_follow_words() {
        let w = word(9, 0, 1).to_le_bytes();
        for (k, b) in w.iter().enumerate() {
            assert_eq!(stream_byte(9, 8 + k as u64), *b);
        }
    }

    #[test]
    fn memory_pattern_is_the_disk_pattern_as_a_stream() {
        let mut a = [0u8; 1024];
        fill_pattern(5, 0, &mut a);
        let mut s0 = [0u8; 512];
        fill_sector(5, 0, &mut s0);
        let mut s1 = [0u8; 512];
        fill_sector(5, 1, &mut s1);
        assert_eq!(&a[..512], &s0[..]);
        assert_eq!(&a[512..], &s1[..]);
        // Word j = splitmix64(seed * golden ^ j), stated independently.
        let w = splitmix64(5u64.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 70);
        assert_eq!(&a[560..568], &w.to_le_bytes());
        // An unaligned window agrees with the whole.
        let mut part = [0u8; 100];
        fill_pattern(5, 333, &mut part);
        assert_eq!(&part[..], &a[333..433]);
        assert_eq!(pattern_mismatches(5, 333, &part), 0);
        part[10] ^= 1;
        part[99] ^= 0x80;
        assert_eq!(pattern_mismatches(5, 333, &part), 2);
        assert_ne!(pattern_mismatches(6, 333, &part), 0);
    }

    #[test]
    fn sectors_differ_and_mismatches_are_found() {
        let mut image = pattern_bytes(7, 8);
        assert_ne!(image[..512], image[512..1024]);
        assert!(mismatched_sectors(7, &image, 8).is_empty());
        assert_eq!(mismatched_sectors(8, &image, 8).len(), 8, "another seed matches nothing");
        image[3 * 512 + 100] ^= 1;
        assert_eq!(mismatched_sectors(7, &image, 8), alloc::vec![3]);
        assert_eq!(mismatched_sectors(7, &image[..1024], 8).len(), 6, "short image");
    }
}
