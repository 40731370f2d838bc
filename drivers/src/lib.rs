//! Device drivers for lparos (PCI, virtio, network stack glue).
#![cfg_attr(not(test), no_std)]
