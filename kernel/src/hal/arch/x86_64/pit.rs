//! The 8254 PIT, used once at boot as the reference of known frequency to
//! calibrate the TSC and the local APIC timer: channel 2 counts down from
//! 0xffff and the caller latches and reads the count.

use super::port::{inb, outb};

/// PIT input clock in Hz.
pub const PIT_HZ: u64 = 1_193_182;

/// Start channel 2 counting down from 0xffff (about 55 ms) in mode 0,
/// gated on, speaker off.
pub fn start_countdown() {
    let gate = inb(0x61);
    outb(0x61, (gate & !0x03) | 0x01); // gate on, speaker off
    outb(0x43, 0b1011_0000); // channel 2, lobyte/hibyte, mode 0, binary
    outb(0x42, 0xff);
    outb(0x42, 0xff);
}

/// Freeze channel 2's current count for [`read_latched`]: the count is
/// the one at this port write, however late it is read.
pub fn latch() {
    outb(0x43, 0b1000_0000); // channel 2, counter latch
}

/// The count frozen by the last [`latch`].
pub fn read_latched() -> u16 {
    let lo = inb(0x42) as u16;
    let hi = inb(0x42) as u16;
    hi << 8 | lo
}

/// True once channel 2 has counted down to zero since
/// [`start_countdown`] (its output goes high in mode 0).
pub fn expired() -> bool {
    inb(0x61) & 0x20 != 0
}
