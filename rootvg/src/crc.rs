//! crc.rs — the one checksum used on disk: CRC-32C (Castagnoli, the iSCSI
//! polynomial 0x1EDC6F41, reflected, init and xorout 0xFFFFFFFF).
//!
//! The table-driven implementation comes from the `crc` crate (no_std, no
//! features). This module pins the algorithm in one place so the label, the
//! slot headers and the metadata payload can never drift apart.

use crc::{Crc, CRC_32_ISCSI};

const CASTAGNOLI: Crc<u32> = Crc::<u32>::new(&CRC_32_ISCSI);

/// CRC-32C of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    CASTAGNOLI.checksum(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_check_value() {
        // The standard check value of CRC-32C over "123456789".
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn detects_single_bit_flip() {
        let mut data = [0x5au8; 512];
        let before = crc32c(&data);
        data[100] ^= 0x04;
        assert_ne!(before, crc32c(&data));
    }
}
