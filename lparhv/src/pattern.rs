//! The deterministic disk pattern the guest's `disk_test` writes and checks
//! (see docs/drivers.md): sector `s` holds 64 little-endian words
//! `splitmix64(seed * 0x9E3779B97F4A7C15 ^ (s * 64 + j))`.

/// One step of the splitmix64 generator.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Fill `buf` (a whole sector) with the pattern of sector `sector`.
pub fn fill_sector(seed: u64, sector: u64, buf: &mut [u8; 512]) {
    let base = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for (j, chunk) in buf.chunks_exact_mut(8).enumerate() {
        let word = splitmix64(base ^ (sector * 64 + j as u64));
        chunk.copy_from_slice(&word.to_le_bytes());
    }
}

/// Write the pattern of sectors `0..sectors` into an image.
pub fn pattern_bytes(seed: u64, sectors: u64) -> Vec<u8> {
    let mut out = vec![0u8; sectors as usize * 512];
    for (s, chunk) in out.chunks_exact_mut(512).enumerate() {
        let sector: &mut [u8; 512] = chunk.try_into().expect("exact chunk");
        fill_sector(seed, s as u64, sector);
    }
    out
}

/// Sectors of `image` (from sector 0) that differ from the pattern.
pub fn mismatched_sectors(seed: u64, image: &[u8], sectors: u64) -> Vec<u64> {
    let mut expected = [0u8; 512];
    (0..sectors)
        .filter(|&s| {
            fill_sector(seed, s, &mut expected);
            image.get(s as usize * 512..(s as usize + 1) * 512) != Some(&expected[..])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_known_values() {
        // Reference values of splitmix64 for inputs 0 and 1.
        assert_eq!(splitmix64(0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix64(1), 0x910A_2DEC_8902_5CC1);
    }

    #[test]
    fn sectors_differ_and_mismatches_are_found() {
        let mut image = pattern_bytes(7, 8);
        assert_ne!(image[..512], image[512..1024]);
        assert!(mismatched_sectors(7, &image, 8).is_empty());
        assert_eq!(mismatched_sectors(8, &image, 8).len(), 8, "another seed matches nothing");
        image[3 * 512 + 100] ^= 1;
        assert_eq!(mismatched_sectors(7, &image, 8), vec![3]);
        assert_eq!(mismatched_sectors(7, &image[..1024], 8).len(), 6, "short image");
    }
}
