//! The monotonic clock: the TSC, calibrated once at boot against the PIT
//! (which also calibrates the local APIC timer in the same window). Time is
//! counted from the kernel's first instruction.
//!
//! Under KVM the TSC keeps running while the host has the guest stopped, so
//! a freeze shows up as a jump; code that must not misfire after a freeze
//! (heartbeats, time-outs) handles that explicitly.

use crate::executor::Clock;
use crate::hal::arch::x86_64::{boot, cpu, lapic, pit};
use core::sync::atomic::{AtomicU64, Ordering};

static TSC_HZ: AtomicU64 = AtomicU64::new(0);

/// Calibration window in PIT ticks (about 1 ms: the rate is then known to
/// about 0.1 %, one PIT tick in 1193; a longer window only delays boot).
const CALIBRATION_TICKS: u16 = 1193;

/// Measure the TSC and local APIC timer rates. Returns the TSC rate in Hz.
pub fn calibrate() -> u64 {
    let mut tsc_start = 0;
    let ok = pit::wait_ticks(CALIBRATION_TICKS, || {
        lapic::start_free_running();
        tsc_start = cpu::rdtsc();
    });
    let tsc_end = cpu::rdtsc();
    let apic_ticks = lapic::elapsed_since_start() as u64;
    let window_ns = CALIBRATION_TICKS as u64 * 1_000_000_000 / pit::PIT_HZ;
    let hz = if ok && tsc_end > tsc_start {
        (tsc_end - tsc_start) as u128 * 1_000_000_000 / window_ns as u128
    } else {
        // No PIT answered: assume a 1 GHz TSC and say so.
        log::warn!("PIT calibration failed; assuming a 1 GHz TSC");
        1_000_000_000
    } as u64;
    TSC_HZ.store(hz.max(1), Ordering::Relaxed);
    lapic::set_ticks_per_ms(apic_ticks * 1_000_000 / window_ns.max(1));
    hz
}

/// Convert a TSC delta to nanoseconds.
pub fn tsc_to_ns(delta: u64) -> u64 {
    let hz = TSC_HZ.load(Ordering::Relaxed);
    if hz == 0 {
        return 0;
    }
    (delta as u128 * 1_000_000_000 / hz as u128) as u64
}

/// Nanoseconds since the kernel's first instruction.
pub fn now_ns() -> u64 {
    tsc_to_ns(cpu::rdtsc().saturating_sub(boot::entry_tsc()))
}

/// Microseconds since the kernel's first instruction.
pub fn now_us() -> u64 {
    now_ns() / 1000
}

/// The executor's clock.
pub struct TscClock;

impl Clock for TscClock {
    fn now_ns(&self) -> u64 {
        now_ns()
    }
}
