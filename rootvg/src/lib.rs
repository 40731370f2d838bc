//! rootvg — the root volume group of an lparos partition.
//!
//! A rootvg lives on one LUN (a block device of 512-byte sectors served by
//! the storage server). Its on-disk format is a label in sector 0, two
//! checksummed metadata copies (slots A and B) with generation numbers, and a
//! data area cut into fixed-size extents; logical volumes are ordered lists
//! of extent runs. The format is described byte by byte in `docs/rootvg.md`.
//!
//! The core (everything but `host`) is `no_std` + `alloc` and is what the
//! guest kernel uses:
//!
//! * [`VolumeGroup::activate`] finds and validates the VG through a
//!   [`BlockDevice`] (implemented by the guest's virtio-blk driver);
//! * [`VolumeGroup::lv`] / [`LvMap::map_bytes`] map LV offsets to device
//!   sectors; [`VolumeGroup::open`] gives a [`LogicalVolume`] with
//!   read/write/flush (a write is acknowledged only after `flush`);
//! * [`VolumeGroup::reverify`] re-checks the metadata after a storage outage;
//! * [`VolumeGroup::update`] changes the LV table with the A/B rule.
//!
//! With the `std` feature, [`host`] builds images from a TOML spec and
//! inspects and checks them.
//!
//! Every byte read from the device is untrusted: decoding validates it all,
//! returns errors instead of panicking, and never allocates more than the
//! (bounded) metadata slot size.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(all(feature = "std", not(test)))]
extern crate std;

pub mod activate;
pub mod crc;
pub mod device;
pub mod error;
pub mod format;
pub mod lv;
pub mod metadata;

#[cfg(feature = "std")]
pub mod host;

pub use activate::{Slot, SlotStatus, VolumeGroup};
pub use device::{BlockDevice, IoError, MemDevice};
pub use error::Error;
pub use format::{Label, LabelError, Name, NameError, Uuid};
pub use lv::{LogicalVolume, LvMap, Segment, Segments};
pub use metadata::{LvRecord, Metadata, Run, SlotError, LV_FLAG_READ_ONLY};

#[cfg(test)]
mod tests;
