//! Plain logic of the hypercall test behaviours (docs/hcall-guest.md),
//! unit-tested on the host: the `hcall_test=` command-line value, latency
//! percentiles. The shared-memory byte pattern they write and check is
//! `proto::pattern::fill_pattern`.

use alloc::format;
use alloc::string::String;
use proto::num::parse_u64;

/// What `hcall_test=` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HcallTest {
    /// `echo:<n>`: n ECHO round trips of 64 bytes.
    Echo { count: u32 },
    /// `share:<seed>`: accept a grant, write the pattern, verify it.
    Share { seed: u64 },
    /// `read:<seed>`: accept a grant, verify the pattern another wrote.
    Read { seed: u64 },
    /// `cycle:<n>`: accept the first grant and return it, n times.
    Cycle { count: u32 },
}

/// Most echoes one test may ask for.
pub const MAX_ECHOES: u64 = 1_000_000;

pub fn parse_test(spec: &str) -> Result<HcallTest, String> {
    let (kind, arg) =
        spec.split_once(':').ok_or_else(|| format!("hcall_test={spec}: expected echo:<n>, cycle:<n>, share:<seed> or read:<seed>"))?;
    let n = parse_u64(arg).map_err(|_| format!("hcall_test={spec}: {arg:?} is not a number"))?;
    match kind {
        "echo" if (1..=MAX_ECHOES).contains(&n) => Ok(HcallTest::Echo { count: n as u32 }),
        "echo" => Err(format!("hcall_test={spec}: count must be 1..={MAX_ECHOES}")),
        "cycle" if (1..=MAX_ECHOES).contains(&n) => Ok(HcallTest::Cycle { count: n as u32 }),
        "cycle" => Err(format!("hcall_test={spec}: count must be 1..={MAX_ECHOES}")),
        "share" => Ok(HcallTest::Share { seed: n }),
        "read" => Ok(HcallTest::Read { seed: n }),
        _ => Err(format!("hcall_test={spec}: unknown test {kind:?}")),
    }
}

/// Nearest-rank percentile `p` (0..=100) of `samples` (sorted in place).
/// 0 for an empty list.
pub fn percentile(samples: &mut [u64], p: u32) -> u64 {
    if samples.is_empty() {
        return 0;
    }
    samples.sort_unstable();
    let rank = (samples.len() * p.min(100) as usize).div_ceil(100).max(1);
    samples[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse() {
        assert_eq!(parse_test("echo:100"), Ok(HcallTest::Echo { count: 100 }));
        assert_eq!(parse_test("share:0x2a"), Ok(HcallTest::Share { seed: 42 }));
        assert_eq!(parse_test("read:7"), Ok(HcallTest::Read { seed: 7 }));
        assert_eq!(parse_test("cycle:50"), Ok(HcallTest::Cycle { count: 50 }));
        for bad in ["cycle:0", "echo:0", "echo:x", "echo", "share:", "frob:1", "echo:2000000"] {
            assert!(parse_test(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn percentiles() {
        let mut v: Vec<u64> = (1..=100).rev().collect();
        assert_eq!(percentile(&mut v, 50), 50);
        assert_eq!(percentile(&mut v, 99), 99);
        assert_eq!(percentile(&mut v, 100), 100);
        assert_eq!(percentile(&mut [7], 99), 7);
        assert_eq!(percentile(&mut [], 50), 0);
    }
}
