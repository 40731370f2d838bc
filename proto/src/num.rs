//! Numbers and sizes as people write them in command lines and config files:
//! the kernel command line's values (docs/events.md "Kernel command line"),
//! the test specs (`writer:<seed>`, `hcall_test=share:<seed>`,
//! `disk_test=write:<seed>:<n>`), the CLI's wire cookies (docs/lparhv.md)
//! and region / LV sizes (docs/lparhv.md `[[owner.memory]]`, docs/rootvg.md).
//!
//! Every parser returns its error as a value; none panics on any input.

use core::fmt;
use core::num::ParseIntError;

/// An unsigned integer in decimal (`42`) or hex with a `0x` prefix (`0x2a`).
pub fn parse_u64(text: &str) -> Result<u64, ParseIntError> {
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    }
}

/// Hex digits (no prefix) as a `u128`, e.g. a 32-digit wire cookie.
pub fn parse_hex_u128(hex: &str) -> Result<u128, ParseIntError> {
    u128::from_str_radix(hex, 16)
}

/// Why a size could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeError {
    /// No decimal number at the start.
    BadNumber,
    /// The suffix is none of `B`, `K`/`KiB`, `M`/`MiB`, `G`/`GiB`, `T`/`TiB`.
    BadUnit,
    /// The size does not fit in 64 bits.
    Overflow,
}

impl fmt::Display for SizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SizeError::BadNumber => "not a number of bytes",
            SizeError::BadUnit => "unknown unit (use B, KiB, MiB, GiB, TiB)",
            SizeError::Overflow => "size does not fit in 64 bits",
        })
    }
}

impl core::error::Error for SizeError {}

/// A byte count: a decimal number and an optional binary unit, `B`, `K` or
/// `KiB`, `M` or `MiB`, `G` or `GiB`, `T` or `TiB` (any case, spaces allowed
/// around and between): `"4096"`, `"64KiB"`, `"1 M"`, `"2gib"`.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let text = text.trim();
    let digits_end = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let n: u64 = number.parse().map_err(|_| SizeError::BadNumber)?;
    n.checked_mul(unit_bytes(unit.trim())?).ok_or(SizeError::Overflow)
}

fn unit_bytes(unit: &str) -> Result<u64, SizeError> {
    const UNITS: [(&str, &str, u32); 5] = [("", "b", 0), ("k", "kib", 10), ("m", "mib", 20), ("g", "gib", 30), ("t", "tib", 40)];
    UNITS
        .iter()
        .find(|(short, long, _)| unit.eq_ignore_ascii_case(short) || unit.eq_ignore_ascii_case(long))
        .map(|&(_, _, shift)| 1u64 << shift)
        .ok_or(SizeError::BadUnit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_and_hex_numbers() {
        assert_eq!(parse_u64("42"), Ok(42));
        assert_eq!(parse_u64("0x2a"), Ok(42));
        assert!(parse_u64("0X2a").is_err(), "only a lower-case prefix, as before");
        assert_eq!(parse_u64("18446744073709551615"), Ok(u64::MAX));
        for bad in ["", "x", "0x", "-1", "18446744073709551616", "0x1_0", "1 "] {
            assert!(parse_u64(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_hex_u128("ffffffffffffffffffffffffffffffff"), Ok(u128::MAX));
        assert!(parse_hex_u128("0xff").is_err());
        assert!(parse_hex_u128("").is_err());
    }

    #[test]
    fn sizes_both_old_parsers_accepted() {
        // lparhv's `[[owner.memory]]` sizes.
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("1 MiB"), Ok(1 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("512B"), Ok(512));
        // rootvg's LV sizes: any case, terabytes.
        assert_eq!(parse_size(" 2gib "), Ok(2 << 30));
        assert_eq!(parse_size("3 TiB"), Ok(3 << 40));
        assert_eq!(parse_size("1t"), Ok(1 << 40));
        assert_eq!(parse_size("8 kib"), Ok(8192));
    }

    #[test]
    fn bad_sizes_say_why() {
        assert_eq!(parse_size("x"), Err(SizeError::BadNumber));
        assert_eq!(parse_size(""), Err(SizeError::BadNumber));
        assert_eq!(parse_size("-1K"), Err(SizeError::BadNumber));
        assert_eq!(parse_size("64 parsecs"), Err(SizeError::BadUnit));
        assert_eq!(parse_size("1PiB"), Err(SizeError::BadUnit));
        assert_eq!(parse_size("99999999999999999999G"), Err(SizeError::BadNumber));
        assert_eq!(parse_size("17179869184G"), Err(SizeError::Overflow));
    }
}
