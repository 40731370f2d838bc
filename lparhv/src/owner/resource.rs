//! Resources an owner partition can share, and the access a grant carries.
//! General over resource kinds: memory regions today; storage LUNs and PCI
//! slots have a kind already so grants of them fit the same table later.

use super::ids::{PartitionId, ResourceId};
use super::l2p::PAGE_SIZE;
use serde::{Deserialize, Serialize};

/// What kind of thing a resource is. The kind decides the unit in which it
/// can be split into sub-ranges for grants and sub-grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ResourceKind {
    /// A region of memory owned by lparhv; length in bytes, split by pages.
    MemoryRegion,
    /// A storage LUN; length in blocks, split by blocks.
    StorageLun,
    /// A PCI slot; length 1, shared whole.
    PciSlot,
}

impl ResourceKind {
    /// Offsets and lengths of grants of this kind must be multiples of this.
    pub const fn granularity(self) -> u64 {
        match self {
            ResourceKind::MemoryRegion => PAGE_SIZE,
            ResourceKind::StorageLun | ResourceKind::PciSlot => 1,
        }
    }
}

/// One resource in the owner's inventory (Figure 4's base logical resource
/// control structure of the owner).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    pub id: ResourceId,
    pub kind: ResourceKind,
    /// The partition that owns the resource (may grant it without a parent).
    pub owner: PartitionId,
    /// Size in the kind's unit (bytes for memory).
    pub length: u64,
}

/// What a grant lets its client do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Access {
    ReadOnly,
    ReadWrite,
}

impl Access {
    /// Whether an access (a write if `write`) is allowed.
    pub const fn allows(self, write: bool) -> bool {
        !write || matches!(self, Access::ReadWrite)
    }

    /// Whether `self` grants at least everything `narrower` does (a sub-grant
    /// may narrow its parent's access, never widen it).
    pub const fn covers(self, narrower: Access) -> bool {
        matches!((self, narrower), (Access::ReadWrite, _) | (Access::ReadOnly, Access::ReadOnly))
    }
}

/// Checks that `[offset, offset + length)` is a non-empty range inside
/// `limit` units, aligned to `granularity`. Returns the end on success.
pub(crate) fn check_range(offset: u64, length: u64, limit: u64, granularity: u64) -> Option<u64> {
    if length == 0 || granularity == 0 || !offset.is_multiple_of(granularity) || !length.is_multiple_of(granularity) {
        return None;
    }
    let end = offset.checked_add(length)?;
    (end <= limit).then_some(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_rules() {
        assert!(Access::ReadOnly.allows(false));
        assert!(!Access::ReadOnly.allows(true));
        assert!(Access::ReadWrite.allows(true));
        assert!(Access::ReadWrite.covers(Access::ReadOnly));
        assert!(!Access::ReadOnly.covers(Access::ReadWrite));
    }

    #[test]
    fn range_checks() {
        assert_eq!(check_range(0, 4096, 8192, 4096), Some(4096));
        assert_eq!(check_range(4096, 4096, 8192, 4096), Some(8192));
        assert_eq!(check_range(4096, 8192, 8192, 4096), None);
        assert_eq!(check_range(0, 0, 8192, 4096), None);
        assert_eq!(check_range(1, 4096, 8192, 4096), None);
        assert_eq!(check_range(u64::MAX - 4096, 4096, u64::MAX, 1), Some(u64::MAX));
        assert_eq!(check_range(u64::MAX, 2, u64::MAX, 1), None);
    }
}
