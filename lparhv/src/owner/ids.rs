//! Identifiers of the owner-side model: partitions with their generation,
//! resources, grants, cookies, and the caller-supplied clock.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A partition's configured id. Ids are reused when a partition restarts;
/// what tells incarnations apart is the [`Generation`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PartitionId(pub u32);

/// Incarnation counter of a partition id. It only ever grows: each failure or
/// restart of a partition gives it a new generation, and every grant, cookie
/// and mapping is bound to the generation it was made for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Generation(pub u64);

/// One incarnation of a partition: id plus generation. Every call into the
/// table names its caller this way, so a caller from an old incarnation is
/// refused ([`crate::owner::Reason::StaleGeneration`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PartitionRef {
    pub id: PartitionId,
    pub generation: Generation,
}

/// A resource owned by some partition (for now: a memory region of lparhv).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ResourceId(pub u32);

/// Owner-private, never reused number of one grant (one cookie). Guests never
/// see it; the CLI and logs do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GrantId(pub u64);

/// The opaque value a client presents to accept or return a grant. Random
/// (64 bits from the OS CSPRNG), never zero, unique within the client
/// partition it was made for and meaningless to any other partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Cookie(pub u64);

/// Milliseconds on a monotonic clock the caller owns. The model never reads
/// a clock itself, so tests control time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Millis(pub u64);

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "lp{}", self.0)
    }
}

impl fmt::Display for PartitionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.g{}", self.id, self.generation.0)
    }
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "res{}", self.0)
    }
}

impl fmt::Display for GrantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "grant{}", self.0)
    }
}

impl fmt::Display for Cookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#018x}", self.0)
    }
}
