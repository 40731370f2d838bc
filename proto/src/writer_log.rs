//! The checked-write log of the `vios_test=writer:<seed>` service
//! (docs/vios.md), shared by the guest (which writes it) and lparhv (which
//! verifies it on the LUN image afterwards).
//!
//! The writer fills LV `data` with 4 KiB records. Record `seq` (1, 2, 3 …)
//! goes to LV block `(seq - 1) % blocks`, so the log wraps. A record counts
//! as acknowledged only after its write and a following flush returned Ok.
//!
//! Record layout (little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | magic `LPWRLOG1` |
//! | 8..16 | sequence number (≥ 1) |
//! | 16..24 | seed |
//! | 24..32 | LV block number |
//! | 32..4092 | payload: u32 words, the low half of `splitmix64(seed ^ seq·φ ^ index)` |
//! | 4092..4096 | CRC-32C of bytes 0..4092 |

use crate::num::parse_u64;
use crate::pattern::{splitmix64, GOLDEN};
use core::fmt;
use crc::{Crc, CRC_32_ISCSI};

pub const RECORD_SIZE: usize = 4096;
pub const MAGIC: [u8; 8] = *b"LPWRLOG1";
const CRC_AT: usize = RECORD_SIZE - 4;

/// CRC-32C (Castagnoli), the checksum rootvg uses on disk too.
const CRC32C: Crc<u32> = Crc::<u32>::new(&CRC_32_ISCSI);

fn crc32c(bytes: &[u8]) -> u32 {
    CRC32C.checksum(bytes)
}

/// LV block of record `seq` in an LV of `blocks` 4 KiB blocks.
pub fn block_of(seq: u64, blocks: u64) -> u64 {
    seq.saturating_sub(1) % blocks.max(1)
}

/// Build record `seq`.
pub fn encode(seed: u64, seq: u64, blocks: u64, out: &mut [u8; RECORD_SIZE]) {
    out[0..8].copy_from_slice(&MAGIC);
    out[8..16].copy_from_slice(&seq.to_le_bytes());
    out[16..24].copy_from_slice(&seed.to_le_bytes());
    out[24..32].copy_from_slice(&block_of(seq, blocks).to_le_bytes());
    let base = seed ^ seq.wrapping_mul(GOLDEN);
    for (i, w) in out[32..CRC_AT].chunks_exact_mut(4).enumerate() {
        w.copy_from_slice(&(splitmix64(base ^ i as u64) as u32).to_le_bytes());
    }
    let crc = crc32c(&out[..CRC_AT]);
    out[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
}

/// A decoded, self-consistent record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub seed: u64,
    pub block: u64,
}

/// Why a block does not hold a valid record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordError {
    /// No magic: never written (or overwritten by something else).
    NoRecord,
    BadCrc,
    /// The CRC matches but the payload is not the one the header implies.
    BadPayload,
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecordError::NoRecord => "no record",
            RecordError::BadCrc => "CRC mismatch",
            RecordError::BadPayload => "payload does not match its header",
        })
    }
}

fn u64_at(b: &[u8; RECORD_SIZE], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Decode and fully check one block (any bytes: never panics).
pub fn decode(b: &[u8; RECORD_SIZE], blocks: u64) -> Result<Record, RecordError> {
    if b[0..8] != MAGIC {
        return Err(RecordError::NoRecord);
    }
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&b[CRC_AT..]);
    if crc32c(&b[..CRC_AT]) != u32::from_le_bytes(crc) {
        return Err(RecordError::BadCrc);
    }
    let r = Record { seq: u64_at(b, 8), seed: u64_at(b, 16), block: u64_at(b, 24) };
    let mut want = [0u8; RECORD_SIZE];
    encode(r.seed, r.seq, blocks, &mut want);
    if want != *b {
        return Err(RecordError::BadPayload);
    }
    Ok(r)
}

/// Result of checking a writer log against the number of acknowledged
/// records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogCheck {
    /// How many of the newest records the log holds (the LV's blocks): the
    /// verification window. Records older than `acked - window` were
    /// overwritten by design and are not checked.
    pub window: u64,
    /// Acknowledged records that could be checked (the last `blocks` ones:
    /// older ones were overwritten by the wrapping log, by design).
    pub checked: u64,
    /// Of those, found intact with their own sequence number.
    pub intact: u64,
    /// Found overwritten by a later record of the same block (allowed: the
    /// writer may have written past `acked` before it stopped).
    pub superseded: u64,
    /// Acknowledged records that are missing or damaged (must be 0).
    pub lost: u64,
    /// The first few losses: (seq, what was found).
    pub first_losses: [Option<(u64, LossKind)>; 4],
}

/// What was found in place of a lost record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossKind {
    Bad(RecordError),
    WrongSeed(u64),
    /// An older record (the acknowledged write did not land).
    Older(u64),
    WrongBlock(u64),
    ReadFailed,
}

impl LogCheck {
    pub fn ok(&self) -> bool {
        self.lost == 0
    }
}

/// Check that every acknowledged record `1..=acked` that the log can still
/// hold is present. `read_block(b)` returns LV block `b` (or `None` if it
/// cannot be read).
pub fn check_log(seed: u64, acked: u64, blocks: u64, mut read_block: impl FnMut(u64) -> Option<[u8; RECORD_SIZE]>) -> LogCheck {
    let mut c = LogCheck { window: blocks, ..LogCheck::default() };
    if blocks == 0 {
        return c;
    }
    let first = acked.saturating_sub(blocks) + 1;
    for seq in first..=acked {
        c.checked += 1;
        let b = block_of(seq, blocks);
        let loss = match read_block(b) {
            None => Some(LossKind::ReadFailed),
            Some(data) => match decode(&data, blocks) {
                Err(e) => Some(LossKind::Bad(e)),
                Ok(r) if r.seed != seed => Some(LossKind::WrongSeed(r.seed)),
                Ok(r) if r.block != b => Some(LossKind::WrongBlock(r.block)),
                Ok(r) if r.seq == seq => {
                    c.intact += 1;
                    None
                }
                Ok(r) if r.seq > seq && block_of(r.seq, blocks) == b => {
                    c.superseded += 1;
                    None
                }
                Ok(r) => Some(LossKind::Older(r.seq)),
            },
        };
        if let Some(kind) = loss {
            if let Some(slot) = c.first_losses.iter_mut().find(|s| s.is_none()) {
                *slot = Some((seq, kind));
            }
            c.lost += 1;
        }
    }
    c
}

/// `vios_test=writer:<seed>` → seed (decimal or 0x-hex).
pub fn parse_writer_spec(spec: &str) -> Result<u64, &'static str> {
    let seed = spec.strip_prefix("writer:").ok_or("expected writer:<seed>")?;
    parse_u64(seed).map_err(|_| "bad seed in writer:<seed>")
}

/// Retry policy for a failed write: delay before retry `attempt` (1-based),
/// 50 ms doubling up to 1 s.
pub fn backoff_ms(attempt: u32) -> u64 {
    (50u64 << attempt.saturating_sub(1).min(5)).min(1000)
}

/// Failed attempts of one record tolerated before the writer gives up.
pub const MAX_RETRIES: u32 = 40;

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn records_round_trip_and_damage_is_caught() {
        let mut b = [0u8; RECORD_SIZE];
        encode(7, 3, 10, &mut b);
        assert_eq!(decode(&b, 10), Ok(Record { seq: 3, seed: 7, block: 2 }));
        let mut d = b;
        d[2000] ^= 1;
        assert_eq!(decode(&d, 10), Err(RecordError::BadCrc));
        assert_eq!(decode(&[0u8; RECORD_SIZE], 10), Err(RecordError::NoRecord));
        let mut e = [0u8; RECORD_SIZE];
        encode(7, 4, 10, &mut e);
        assert_ne!(b[32..64], e[32..64], "payload depends on seq");
    }

    #[test]
    fn fixed_record_vector() {
        // Record (seed 7, seq 3, 10 blocks) as computed by an independent
        // Python transcription of the layout above: the format on the
        // LUN must not change when the code moves.
        let mut b = [0u8; RECORD_SIZE];
        encode(7, 3, 10, &mut b);
        assert_eq!(&b[..8], b"LPWRLOG1");
        assert_eq!(u64_at(&b, 24), 2);
        assert_eq!(&b[32..40], &[0xc2, 0xd0, 0xda, 0xed, 0x5a, 0x67, 0x56, 0x88]);
        assert_eq!(u32::from_le_bytes([b[4092], b[4093], b[4094], b[4095]]), 0x6895_D777);
        assert_eq!(crc32c(b"123456789"), 0xE306_9283, "the CRC-32C check value");
    }

    #[test]
    fn forged_crc_with_wrong_payload_is_caught() {
        let mut b = [0u8; RECORD_SIZE];
        encode(1, 1, 4, &mut b);
        b[100] ^= 0x80;
        let crc = crc32c(&b[..CRC_AT]);
        b[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&b, 4), Err(RecordError::BadPayload));
    }

    fn disk(seed: u64, upto: u64, blocks: u64) -> Vec<[u8; RECORD_SIZE]> {
        let mut d = alloc::vec![[0u8; RECORD_SIZE]; blocks as usize];
        for seq in 1..=upto {
            encode(seed, seq, blocks, &mut d[block_of(seq, blocks) as usize]);
        }
        d
    }

    #[test]
    fn log_check_finds_losses_and_accepts_wrap_and_overrun() {
        let d = disk(5, 25, 10);
        let c = check_log(5, 25, 10, |b| d.get(b as usize).copied());
        assert_eq!((c.checked, c.intact, c.lost), (10, 10, 0));
        // Writer got further than the acks (e.g. stopped mid-flush).
        let c = check_log(5, 17, 10, |b| d.get(b as usize).copied());
        assert_eq!((c.ok(), c.intact, c.superseded), (true, 2, 8), "{c:?}");
        // The last acked write did not land.
        let mut d2 = disk(5, 24, 10);
        let c = check_log(5, 25, 10, |b| d2.get(b as usize).copied());
        assert_eq!((c.lost, c.first_losses[0]), (1, Some((25, LossKind::Older(15)))));
        d2[0][40] ^= 1;
        assert_eq!(check_log(5, 21, 10, |b| d2.get(b as usize).copied()).lost, 1);
        assert_eq!(check_log(6, 5, 10, |b| d.get(b as usize).copied()).lost, 5, "wrong seed");
        assert_eq!(check_log(5, 5, 10, |_| None).lost, 5);
    }

    #[test]
    fn spec_and_backoff() {
        assert_eq!(parse_writer_spec("writer:42"), Ok(42));
        assert_eq!(parse_writer_spec("writer:0x10"), Ok(16));
        assert!(parse_writer_spec("reader:1").is_err());
        assert!(parse_writer_spec("writer:x").is_err());
        assert_eq!((backoff_ms(1), backoff_ms(2), backoff_ms(5), backoff_ms(99)), (50, 100, 800, 1000));
    }
}
