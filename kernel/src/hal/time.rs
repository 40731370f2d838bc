//! The monotonic clock: the TSC, calibrated once at boot against the PIT
//! (which also calibrates the local APIC timer in the same window), and the
//! wake-up timer built on that local APIC timer. Time is counted from the
//! kernel's first instruction.
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

/// Polls of the PIT before calibration gives up (no PIT answering).
const MAX_POLLS: u32 = 5_000_000;

/// Windows tried before calibration gives up (each one the host kept the
/// guest stopped past the PIT's 55 ms wrap).
const MAX_WINDOWS: u32 = 4;

/// The TSC, the PIT count and the local APIC timer read at one moment.
struct ClockSample {
    tsc: u64,
    pit: u16,
    apic: u32,
}

/// Latch the PIT count between two TSC reads and take their midpoint, so
/// the TSC and PIT figures belong to the same instant within one port
/// write; the host stopping the guest elsewhere does not matter.
fn sample() -> ClockSample {
    let before = cpu::rdtsc();
    pit::latch();
    let after = cpu::rdtsc();
    let apic = lapic::elapsed_since_start();
    ClockSample { tsc: before + (after - before) / 2, pit: pit::read_latched(), apic }
}

/// One calibration window: (TSC ticks, local APIC ticks, PIT ticks)
/// between two samples at least `CALIBRATION_TICKS` PIT ticks apart; None
/// if the PIT never got there or wrapped (the count is then ambiguous).
fn measure_window() -> Option<(u64, u64, u64)> {
    pit::start_countdown();
    lapic::start_free_running();
    let start = sample();
    for _ in 0..MAX_POLLS {
        let end = sample();
        let pit_ticks = start.pit.wrapping_sub(end.pit) as u64;
        if pit::expired() {
            return None;
        }
        if pit_ticks >= CALIBRATION_TICKS as u64 {
            return Some((end.tsc.saturating_sub(start.tsc), end.apic.wrapping_sub(start.apic) as u64, pit_ticks));
        }
    }
    None
}

/// Measure the TSC and local APIC timer rates against the PIT. Returns the
/// TSC rate in Hz. Both rates come from clock readings taken together, so
/// a guest the host stops during the window (a loaded host) still gets the
/// right rates: the window just lasts longer.
pub fn calibrate() -> u64 {
    let window = (0..MAX_WINDOWS).find_map(|_| measure_window());
    let hz = match window {
        Some((tsc_ticks, apic_ticks, pit_ticks)) => {
            lapic::set_ticks_per_ms(apic_ticks * pit::PIT_HZ / (pit_ticks * 1000));
            (tsc_ticks as u128 * pit::PIT_HZ as u128 / pit_ticks as u128) as u64
        }
        None => {
            // No PIT answered: assume 1 GHz for the TSC and the local APIC
            // timer, and say so.
            log::warn!("PIT calibration failed; assuming a 1 GHz TSC and local APIC timer");
            lapic::set_ticks_per_ms(1_000_000);
            1_000_000_000
        }
    };
    TSC_HZ.store(hz.max(1), Ordering::Relaxed);
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

/// Interrupt this CPU in `ns` nanoseconds (local APIC one-shot timer), to
/// wake it from a halt.
pub fn arm_wakeup_ns(ns: u64) {
    lapic::arm_oneshot_ns(ns)
}

/// The executor's clock.
pub struct TscClock;

impl Clock for TscClock {
    fn now_ns(&self) -> u64 {
        now_ns()
    }
}
