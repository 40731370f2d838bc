//! The hardware abstraction layer: everything that touches the machine
//! directly, and the only part of the kernel that names the architecture.
//! PVH entry and the x86_64 pieces (`arch/`); the facades the rest of the
//! kernel uses instead: the processor (`cpu`), interrupt controllers
//! (`irq`), the console UART (`console`), port I/O handles (`io`); the
//! physical memory manager, heap and page mappings (`mm`), ECAM, device
//! memory and the virtio-drivers `Hal` (`hw`), the TSC clock and wake-up
//! timer (`time`), the PVH start info (`pvh`), the firmware's ACPI tables
//! and the I/O registers they describe (`firmware`), leaving the guest
//! (`exit`) and the C memory functions the precompiled `core` needs
//! (`memfuncs`). The rest of the kernel builds on these safe interfaces.

pub mod arch;
pub mod console;
pub mod cpu;
pub mod exit;
pub mod firmware;
pub mod hw;
pub mod io;
pub mod irq;
pub mod memfuncs;
pub mod mm;
pub mod pvh;
pub mod time;
