//! The processor, as the rest of the kernel sees it: descriptor tables set
//! up once, the interrupt flag, halting, the cycle counter, a hardware
//! random number, the registers a fault dump shows, and (test image) the
//! deliberate faults. The x86_64 pieces behind it are in `arch/x86_64`.

use crate::hal::arch::x86_64::{boot, cpu, gdt, idt};

pub use crate::hal::arch::x86_64::cpu::{cli, enable_and_halt, halt_forever, interrupts_enabled, rdtsc, sti};
#[cfg(feature = "test-services")]
pub use crate::hal::arch::x86_64::cpu::{raise_invalid_opcode, read_unmapped, write_kernel_text};
/// The saved state of an interrupted context (what a fault dump prints).
pub use crate::hal::arch::x86_64::idt::TrapFrame;

/// Load the kernel's descriptor tables and interrupt vectors (once, early).
pub fn init() {
    gdt::init();
    idt::init();
}

/// A hardware random number, or None when the CPU has no generator.
pub fn random_u64() -> Option<u64> {
    cpu::rdrand64()
}

/// The cycle counter at the kernel's first instruction.
pub fn entry_cycles() -> u64 {
    boot::entry_tsc()
}

/// The address the last page fault was for.
pub fn fault_address() -> u64 {
    cpu::cr2()
}

/// The physical address of the active page-table root.
pub fn page_table_root() -> u64 {
    cpu::cr3()
}
