//! Leaving the guest: QEMU's isa-debug-exit device for tests (the exit code
//! reaches the host), ACPI soft-off otherwise, halt as the last resort.
//!
//! Exit codes the guest reports (QEMU's own exit status is `2 * code + 1`):
//! 0 success, 1 test failure, 2 panic, 3 CPU exception.

use crate::hal::arch::x86_64::cpu;
use crate::hal::arch::x86_64::port::IoPort;

/// I/O port of `-device isa-debug-exit,iobase=0xf4,iosize=0x04`.
// SAFETY: lparhv puts QEMU's isa-debug-exit device at 0xf4 for tests;
// without it nothing on q35 or pc decodes the port, so the write is
// ignored. Only `exit` writes it.
const DEBUG_EXIT: IoPort<u32> = unsafe { IoPort::new(0xf4) };

/// Why the guest stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    Success = 0,
    Failure = 1,
    Panic = 2,
    Exception = 3,
}

/// Stop the guest with `code`. Tries isa-debug-exit, then ACPI soft-off,
/// then halts.
pub fn exit(code: ExitCode) -> ! {
    log::info!("exit code={}", code as u8);
    DEBUG_EXIT.write(code as u32);
    // Still here: no debug-exit device. Power off through ACPI.
    crate::platform::acpi::power_off();
    cpu::halt_forever()
}
