//! ACPI events: ACPI mode, the SCI, the GPE0 block and PM1 events.
//!
//! - ACPI mode: if the FADT has an SMI_CMD port and PM1a_CNT.SCI_EN is
//!   clear, write ACPI_ENABLE to SMI_CMD and wait (at most 1 s) for SCI_EN.
//! - SCI routing: the IRQ number comes from the FADT; the GSI, polarity and
//!   trigger from the MADT's interrupt source override for that IRQ. Without
//!   an override (or with "conforms" fields) we use GSI = IRQ, active-high
//!   (the ISA convention for polarity) and **level**-triggered (ACPI says the
//!   SCI is a sharable level interrupt; an edge setting could lose an event
//!   that arrives while another is still asserted). QEMU's q35 and pc both
//!   give the override IRQ 9, flags 0xd: level, active-high.
//! - The line is level-triggered, so the interrupt dispatcher masks it
//!   (`hal::irq::route_level`), the SCI task clears the status bits it serves
//!   and then unmasks it.
//! - GPE0: the FADT's block; its first half holds status bits (write 1 to
//!   clear), the second half enable bits (all 0 at reset). A table maps GPE
//!   numbers to handlers; registering a handler enables its bit.
//! - PM1: the power button (status and enable bit 8) calls the power-button
//!   handler (an orderly shutdown, see `shutdown.rs`).
//!
//! Handlers run in the SCI task, in thread context; they must be short (the
//! hot-plug handler only wakes the hot-plug task).

use crate::executor::Reactor;
use crate::hal::firmware::Pm1Event;
use crate::hal::io::IoBlock;
use crate::hal::irq;
use crate::platform::acpi::Platform;
use crate::runtime::console::{ev, event};
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use spin::{Mutex, Once};

/// Vector of the SCI (outside the device allocator's range 0x30..0xEF).
pub const SCI_VECTOR: u8 = 0x22;

const PM1_PWRBTN: u16 = 1 << 8;
const PM1_CNT_SCI_EN: u16 = 1;

type Handler = Box<dyn Fn() + Send + Sync>;

struct Sci {
    pm1: Option<Pm1Event>,
    /// The GPE0 block: status bytes, then as many enable bytes.
    gpe: Option<IoBlock>,
    gpe_handlers: Mutex<BTreeMap<u8, Handler>>,
    power_button: Mutex<Option<Handler>>,
}

static SCI: Once<Sci> = Once::new();

/// How the SCI line is wired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SciLine {
    pub gsi: u32,
    pub active_low: bool,
    pub level: bool,
}

/// Decide the SCI's GSI, polarity and trigger from the FADT IRQ and the
/// MADT overrides (MPS INTI flags: bits 1:0 polarity 01 high / 11 low,
/// bits 3:2 trigger 01 edge / 11 level; 00 = conforms to the bus).
pub fn sci_line(irq: u16, overrides: &[crate::platform::acpi::IsaOverride]) -> SciLine {
    match overrides.iter().find(|o| o.irq as u16 == irq) {
        Some(o) => SciLine {
            gsi: o.gsi,
            active_low: o.flags & 3 == 3,
            // "Conforms" for the SCI means level (see the module comment).
            level: o.flags >> 2 & 3 != 1,
        },
        None => SciLine { gsi: irq as u32, active_low: false, level: true },
    }
}

fn enter_acpi_mode(p: &Platform) -> Result<(), &'static str> {
    let Some(cnt) = p.pm.pm1a_control else { return Err("no PM1a control block") };
    if cnt.read() & PM1_CNT_SCI_EN != 0 {
        return Ok(());
    }
    let Some((smi, value)) = p.pm.acpi_enable else {
        // Hardware without the legacy/ACPI switch is always in ACPI mode.
        log::info!("acpi: SCI_EN clear but no SMI_CMD: assuming ACPI mode");
        return Ok(());
    };
    log::info!("acpi: entering ACPI mode (write {value:#x} to SMI_CMD {smi:?})");
    smi.write(value);
    let deadline = crate::hal::time::now_ns() + 1_000_000_000;
    while crate::hal::time::now_ns() < deadline {
        if cnt.read() & PM1_CNT_SCI_EN != 0 {
            return Ok(());
        }
        core::hint::spin_loop();
    }
    Err("SCI_EN did not come on within 1 s")
}

/// Set up ACPI events and start the SCI task. Errors leave the system
/// without ACPI events (logged and reported by the caller).
pub fn init(p: &'static Platform, reactor: &Arc<Reactor>) -> Result<SciLine, &'static str> {
    enter_acpi_mode(p)?;
    let line = sci_line(p.sci_irq, &p.isa_overrides);
    let sci = SCI.call_once(|| Sci {
        pm1: p.pm.pm1a_event,
        gpe: p.pm.gpe0,
        gpe_handlers: Mutex::new(BTreeMap::new()),
        power_button: Mutex::new(None),
    });
    // Quiet the sources before the line is live: all GPE enables off, all
    // status bits cleared; PM1: only the power button.
    if let Some(gpe) = sci.gpe {
        let n = gpe.len() / 2;
        for i in 0..n {
            gpe.write::<u8>(n + i, 0);
            gpe.write::<u8>(i, 0xff);
        }
    }
    if let Some(pm1) = sci.pm1 {
        pm1.status.write(0xffff);
        pm1.enable.write(PM1_PWRBTN);
    }
    if !line.level {
        return Err("MADT says the SCI is edge-triggered: not supported");
    }
    if !irq::route_level(line.gsi, SCI_VECTOR, line.active_low) {
        return Err("no IOAPIC serves the SCI's GSI");
    }
    log::info!(
        "acpi: SCI irq {} -> GSI {} ({}, {}) vector {:#x}; PM1 {:x?}/{:x?}, GPE0 {:x?}",
        p.sci_irq,
        line.gsi,
        if line.level { "level" } else { "edge" },
        if line.active_low { "active-low" } else { "active-high" },
        SCI_VECTOR,
        sci.pm1.map(|e| e.status),
        sci.pm1.map(|e| e.enable),
        sci.gpe
    );
    reactor.spawn("sci", sci_task(reactor.clone()));
    Ok(line)
}

/// Register the handler of GPE `bit` and enable it.
pub fn register_gpe(bit: u8, handler: impl Fn() + Send + Sync + 'static) -> Result<(), &'static str> {
    let sci = SCI.get().ok_or("ACPI events are not set up")?;
    let gpe = sci.gpe.ok_or("no GPE0 block")?;
    let n = gpe.len() / 2;
    if bit as u16 >= n * 8 {
        return Err("GPE number outside the GPE0 block");
    }
    sci.gpe_handlers.lock().insert(bit, Box::new(handler));
    let (sts, en) = ((bit / 8) as u16, n + (bit / 8) as u16);
    gpe.write::<u8>(sts, 1 << (bit % 8)); // stale status
    gpe.write::<u8>(en, gpe.read::<u8>(en) | 1 << (bit % 8));
    // Anything that was pending before enabling is handled on the next pass.
    crate::IRQS.raise(SCI_VECTOR);
    Ok(())
}

/// Set what the power button does.
pub fn on_power_button(handler: impl Fn() + Send + Sync + 'static) {
    if let Some(sci) = SCI.get() {
        *sci.power_button.lock() = Some(Box::new(handler));
    }
}

/// Serve one SCI: returns how many events were dispatched.
fn service(sci: &Sci) -> usize {
    let mut n = 0;
    if let Some(pm1) = sci.pm1 {
        let pending = pm1.status.read() & pm1.enable.read();
        if pending != 0 {
            pm1.status.write(pending); // write 1 to clear
        }
        if pending & PM1_PWRBTN != 0 {
            n += 1;
            event(ev("power_button"));
            match &*sci.power_button.lock() {
                Some(h) => h(),
                None => log::warn!("acpi: power button pressed; no handler"),
            }
        }
    }
    if let Some(gpe) = sci.gpe {
        let bytes = gpe.len() / 2;
        for i in 0..bytes {
            let pending = gpe.read::<u8>(i) & gpe.read::<u8>(bytes + i);
            if pending == 0 {
                continue;
            }
            // Clear first: an event that arrives while the handler runs sets
            // the bit again and is served on the next pass.
            gpe.write::<u8>(i, pending);
            for b in 0..8u8 {
                if pending & (1 << b) == 0 {
                    continue;
                }
                let gpe = (i as u8) * 8 + b;
                n += 1;
                match sci.gpe_handlers.lock().get(&gpe) {
                    Some(h) => h(),
                    None => log::warn!("acpi: GPE {gpe} without handler"),
                }
            }
        }
    }
    n
}

async fn sci_task(reactor: Arc<Reactor>) {
    let Some(sci) = SCI.get() else { return };
    loop {
        let wait = reactor.irq(SCI_VECTOR);
        service(sci);
        // The sources are quiet (their status bits are clear): let the line
        // interrupt again.
        irq::unmask_level(SCI_VECTOR);
        wait.await;
    }
}
