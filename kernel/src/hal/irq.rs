//! Interrupt controllers, as the rest of the kernel sees them: take them
//! over at boot (legacy PICs masked, the local APIC and every IOAPIC the
//! MADT lists), name this CPU, route a level-triggered line to a vector and
//! unmask it once its source is served. The x86_64 pieces behind it are in
//! `arch/x86_64` (`pic`, `lapic`, `ioapic`).

use crate::hal::arch::x86_64::paging::{self, Access};
use crate::hal::arch::x86_64::{ioapic, lapic, pic};

/// Mask the legacy PICs and take over the local APIC at physical
/// `lapic_base` and the IOAPICs `(physical base, first GSI)` (all from the
/// MADT), every IOAPIC pin masked.
pub fn init(lapic_base: u64, ioapics: &[(u64, u32)]) {
    pic::disable();
    let base = paging::map(lapic_base, 4096, Access::Mmio).expect("map local APIC");
    lapic::init(base);
    for &(base, gsi_base) in ioapics {
        let base = paging::map(base, 4096, Access::Mmio).expect("map IOAPIC");
        ioapic::init(base, gsi_base);
    }
}

/// This CPU's interrupt controller id (where device interrupts are sent).
pub fn cpu_id() -> u8 {
    lapic::id()
}

/// Route the level-triggered `gsi` to `vector` on this CPU; the interrupt
/// dispatcher masks it at each interrupt until [`unmask_level`]. False if
/// no IOAPIC serves the GSI.
pub fn route_level(gsi: u32, vector: u8, active_low: bool) -> bool {
    ioapic::route_level(gsi, vector, active_low, lapic::id())
}

/// Let the level-triggered line of `vector` interrupt again (its source
/// was served).
pub fn unmask_level(vector: u8) {
    ioapic::unmask_level(vector)
}
