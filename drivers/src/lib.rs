//! Device drivers for lparos: PCI enumeration and BAR assignment over ECAM,
//! MSI-X programming, and virtio devices (block, network, console) on top of
//! the `virtio-drivers` crate's PCI transport and virtqueues.
//!
//! Everything here is plain logic over traits (`ConfigurationAccess`,
//! `Hal`, `Transport`) so it is unit-tested on the host; the kernel supplies
//! the hardware implementations.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod msix;
pub mod pci;
pub mod pcihp;
pub mod virtio;

pub use virtio_drivers;
