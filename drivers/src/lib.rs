//! Device drivers for lparos: PCI enumeration and BAR assignment over ECAM,
//! MSI-X programming, and virtio devices (block, network, console) on top of
//! the `virtio-drivers` crate's PCI transport and virtqueues.
//!
//! Everything here is plain logic over traits (`ConfigurationAccess`,
//! `Hal`, `Transport`) so it is unit-tested on the host; the kernel supplies
//! the hardware implementations.
//!
//! No `unsafe` here except at one edge: `virtio` calls `virtio-drivers`'
//! non-blocking queue operations, which are `unsafe fn` (the buffers must
//! outlive the request); that module is allowed `unsafe`, each block with a
//! `// SAFETY:` line. Device memory is reached only through [`msix::Mmio`],
//! an `unsafe trait` the kernel's HAL implements.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

extern crate alloc;

pub mod msix;
pub mod pci;
pub mod pcihp;
// The virtio-drivers edge: its queue calls are `unsafe fn`.
#[allow(unsafe_code)]
pub mod virtio;

pub use virtio_drivers;
