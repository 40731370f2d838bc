//! ACPI tables the kernel needs: MADT (interrupt controllers and ISA
//! overrides), MCFG (PCI ECAM base), FADT (PM registers, SCI, GPE block, the
//! DSDT for the S5 sleep type). Parsed with the `acpi` crate; the HAL turns
//! the MCFG entry and the FADT's registers into typed handles
//! (`hal::hw::Ecam::from_mcfg`, `hal::firmware::pm_registers`). Soft-off is
//! done here too.

use crate::hal::firmware::{self, table_bytes, PmRegisters};
use crate::hal::hw::Ecam;
use acpi::fadt::Fadt;
use acpi::madt::{Madt, MadtEntry};
use alloc::vec::Vec;
use spin::Once;

/// An ISA IRQ that the MADT redirects.
#[derive(Clone, Copy, Debug)]
pub struct IsaOverride {
    pub irq: u8,
    pub gsi: u32,
    pub flags: u16,
}

/// Everything the kernel took from the ACPI tables.
#[derive(Debug)]
pub struct Platform {
    pub lapic_base: u64,
    pub ioapics: Vec<(u64, u32)>,
    pub isa_overrides: Vec<IsaOverride>,
    /// ECAM of PCI segment 0 (from the MCFG table; pc has none).
    pub ecam: Option<Ecam>,
    pub sci_irq: u16,
    /// The FADT's PM1a, GPE0 and SMI_CMD registers.
    pub pm: PmRegisters,
    /// SLP_TYP for S5 read from the DSDT's `_S5_` package.
    pub s5_sleep_type: u8,
    /// Physical address of the DSDT.
    pub dsdt: Option<u64>,
}

static PLATFORM: Once<Platform> = Once::new();

/// Parse the tables behind the RSDP at `rsdp`.
pub fn init(rsdp: u64) -> Result<&'static Platform, acpi::AcpiError> {
    let tables = firmware::acpi_tables(rsdp)?;

    let madt = tables.find_table::<Madt>()?;
    let mut lapic_base = madt.get().local_apic_address as u64;
    let mut ioapics = Vec::new();
    let mut isa_overrides = Vec::new();
    for entry in madt.get().entries() {
        match entry {
            MadtEntry::IoApic(io) => ioapics.push((io.io_apic_address as u64, io.global_system_interrupt_base)),
            MadtEntry::InterruptSourceOverride(o) if o.bus == 0 => {
                isa_overrides.push(IsaOverride { irq: o.irq, gsi: o.global_system_interrupt, flags: o.flags })
            }
            MadtEntry::LocalApicAddressOverride(o) => lapic_base = o.local_apic_address,
            _ => {}
        }
    }

    let ecam = Ecam::from_mcfg(&tables);
    let pm = firmware::pm_registers(&tables)?;

    let fadt = tables.find_table::<Fadt>()?;
    let f = fadt.get();
    let dsdt = f.dsdt_address().ok().map(|a| a as u64);
    let s5_sleep_type = dsdt.and_then(find_s5_sleep_type).unwrap_or(0);

    Ok(PLATFORM.call_once(|| Platform { lapic_base, ioapics, isa_overrides, ecam, sci_irq: f.sci_interrupt, pm, s5_sleep_type, dsdt }))
}

impl Platform {
    /// PCI configuration access: ECAM from the MCFG table, else (pc) the
    /// legacy configuration ports.
    pub fn pci_config(&self) -> Ecam {
        self.ecam.unwrap_or_else(Ecam::port_io)
    }
}

/// The parsed platform, once `init` succeeded.
pub fn platform() -> Option<&'static Platform> {
    PLATFORM.get()
}

/// Find SLP_TYPa of `\_S5` by scanning the DSDT's AML for the `_S5_` name
/// and reading the first element of its package. lparos has no AML
/// interpreter (none builds on stable); this one object is simple enough.
fn find_s5_sleep_type(dsdt: u64) -> Option<u8> {
    let aml = table_bytes(dsdt)?;
    let pos = aml.windows(4).position(|w| w == b"_S5_")?;
    // NameOp "_S5_" PackageOp PkgLength NumElements <first element>
    let mut i = pos + 4;
    if *aml.get(i)? != 0x12 {
        return None;
    }
    i += 1;
    let pkg_len_bytes = (*aml.get(i)? >> 6) as usize + 1;
    i += pkg_len_bytes + 1; // PkgLength, NumElements
    match *aml.get(i)? {
        0x0a => aml.get(i + 1).copied(), // BytePrefix value
        0x00 => Some(0),                 // ZeroOp
        0x01 => Some(1),                 // OneOp
        v if v < 8 => Some(v),
        _ => None,
    }
}

/// The DSDT (header and AML), if the FADT names one.
pub fn dsdt_bytes() -> Option<&'static [u8]> {
    table_bytes(platform()?.dsdt?)
}

/// ACPI soft-off (S5). Returns if the platform has no PM1a control block.
pub fn power_off() {
    let Some(p) = platform() else { return };
    if let Some(cnt) = p.pm.pm1a_control {
        cnt.write(((p.s5_sleep_type as u16 & 7) << 10) | (1 << 13));
    }
}
