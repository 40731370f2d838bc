//! Host-side helpers for the disk test pattern. The pattern itself is
//! defined once, in `drivers::pattern`, which the guest uses too.

pub use drivers::pattern::{fill_sector, sector_matches, SECTOR};

/// The pattern of sectors `0..sectors`, as an image's bytes.
pub fn pattern_bytes(seed: u64, sectors: u64) -> Vec<u8> {
    let mut out = vec![0u8; sectors as usize * SECTOR];
    for (s, chunk) in out.chunks_exact_mut(SECTOR).enumerate() {
        let sector: &mut [u8; SECTOR] = chunk.try_into().expect("exact chunk");
        fill_sector(seed, s as u64, sector);
    }
    out
}

/// Sectors among `0..sectors` of `image` that do not hold the pattern
/// (sectors past the end of `image` count as not holding it).
pub fn mismatched_sectors(seed: u64, image: &[u8], sectors: u64) -> Vec<u64> {
    (0..sectors)
        .filter(|&s| {
            let start = s as usize * SECTOR;
            match image.get(start..start + SECTOR) {
                Some(data) => !sector_matches(seed, s, data.try_into().expect("sector-sized slice")),
                None => true,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
