//! Firmware tables in memory: the `acpi` crate's mapping handler (tables
//! are identity mapped, read-only), raw SDT bytes (for the DSDT scan), and
//! the I/O registers the firmware describes, as typed port handles: the
//! FADT's power-management registers (PM1a event and control, GPE0,
//! SMI_CMD) and QEMU's ACPI PCI hot-plug block. These handles are made
//! here, from the tables, and nowhere else.

use crate::hal::arch::x86_64::paging::{self, Access};
use crate::hal::arch::x86_64::port::{IoBlock, IoPort};
use crate::hal::hw::Ecam;
use acpi::address::{AddressSpace, GenericAddress};
use acpi::fadt::Fadt;
use acpi::{AcpiError, AcpiHandler, AcpiTables, PhysicalMapping};
use core::ptr::NonNull;
use drivers::pci::{ConfigurationAccess, DeviceFunction};

/// Identity mapping handler for the `acpi` crate.
#[derive(Clone, Copy, Debug)]
pub struct IdentityHandler;

impl AcpiHandler for IdentityHandler {
    unsafe fn map_physical_region<T>(&self, physical_address: usize, size: usize) -> PhysicalMapping<Self, T> {
        let addr =
            paging::map(physical_address as u64, size as u64, Access::ReadOnly).expect("ACPI table inside the physical address space");
        // SAFETY: the range is identity mapped just above; the acpi crate
        // asks only for ranges the tables themselves describe.
        unsafe { PhysicalMapping::new(physical_address, NonNull::new(addr as *mut T).expect("non-null table address"), size, size, *self) }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

/// The ACPI tables behind the RSDP at `rsdp` (the PVH start info's).
pub fn acpi_tables(rsdp: u64) -> Result<AcpiTables<IdentityHandler>, acpi::AcpiError> {
    // SAFETY: `rsdp` comes from the PVH start info, which points at the
    // firmware's RSDP; the crate validates its signature and checksum.
    unsafe { AcpiTables::from_rsdp(IdentityHandler, rsdp as usize) }
}

/// The bytes of the SDT at `addr` (header included), as long as its header says.
pub fn table_bytes(addr: u64) -> Option<&'static [u8]> {
    let header = paging::map(addr, 36, Access::ReadOnly).ok()?;
    // SAFETY: the 36-byte SDT header at a table address from the FADT, mapped above.
    let len = unsafe { core::ptr::read_unaligned((header + 4) as *const u32) } as u64;
    if !(36..=16 << 20).contains(&len) {
        return None;
    }
    let base = paging::map(addr, len, Access::ReadOnly).ok()?;
    // SAFETY: the whole table, `len` bytes as its header says, mapped above
    // read-only; firmware tables are never freed or changed.
    Some(unsafe { core::slice::from_raw_parts(base as *const u8, len as usize) })
}

/// The ACPI power-management registers of the FADT, as port handles.
#[derive(Clone, Copy, Debug, Default)]
pub struct PmRegisters {
    /// SMI_CMD and the ACPI_ENABLE value written to it to enter ACPI mode;
    /// None when the FADT has no such switch (always in ACPI mode).
    pub acpi_enable: Option<(IoPort<u8>, u8)>,
    /// PM1a status and enable registers.
    pub pm1a_event: Option<Pm1Event>,
    /// PM1a control register (SCI_EN, SLP_TYP, SLP_EN).
    pub pm1a_control: Option<IoPort<u16>>,
    /// The GPE0 block: its status bytes (write 1 to clear), then as many
    /// enable bytes.
    pub gpe0: Option<IoBlock>,
}

/// The PM1a event block's two halves.
#[derive(Clone, Copy, Debug)]
pub struct Pm1Event {
    pub status: IoPort<u16>,
    pub enable: IoPort<u16>,
}

/// A FADT register in system I/O space: (port, length in bytes).
fn io_register(r: Result<Option<GenericAddress>, AcpiError>) -> Option<(u16, u16)> {
    let g = r.ok().flatten().filter(|g| g.address_space == AddressSpace::SystemIo && g.address != 0)?;
    let port = u16::try_from(g.address).ok()?;
    let len = (g.bit_width / 8) as u16;
    // A block that would run past the last port is not a port block.
    (port as u32 + len as u32 <= 0x1_0000).then_some((port, len))
}

/// The power-management registers the FADT of `tables` describes.
pub fn pm_registers(tables: &AcpiTables<IdentityHandler>) -> Result<PmRegisters, AcpiError> {
    let fadt = tables.find_table::<Fadt>()?;
    let f = fadt.get();
    let mut regs = PmRegisters::default();
    // SAFETY (every handle below): the ports come from the FADT, the
    // firmware's own description of this machine's fixed ACPI hardware,
    // which only the ACPI code (platform::sci, platform::acpi) drives.
    if let Some((evt, len)) = io_register(f.pm1a_event_block().map(Some)) {
        // Status in the first half, enable in the second; each at least 16 bits.
        let half = (len / 2).max(2);
        if evt as u32 + 2 * half as u32 <= 0x1_0000 {
            // SAFETY: see above (the FADT's PM1a event block).
            let (status, enable) = unsafe { (IoPort::new(evt), IoPort::new(evt + half)) };
            regs.pm1a_event = Some(Pm1Event { status, enable });
        }
    }
    if let Some((cnt, _)) = io_register(f.pm1a_control_block().map(Some)) {
        // SAFETY: see above (the FADT's PM1a control block).
        regs.pm1a_control = Some(unsafe { IoPort::new(cnt) });
    }
    if let Some((gpe, len)) = io_register(f.gpe0_block()).filter(|&(_, len)| len >= 2) {
        // SAFETY: see above (the FADT's GPE0 block, `len` bytes, checked
        // not to wrap by `io_register`).
        regs.gpe0 = Some(unsafe { IoBlock::new(gpe, len) });
    }
    let smi_cmd = f.smi_cmd_port;
    let acpi_enable = f.acpi_enable;
    if smi_cmd != 0 && acpi_enable != 0 {
        match u16::try_from(smi_cmd) {
            // SAFETY: see above (the FADT's SMI command port, written only
            // with the FADT's ACPI_ENABLE value).
            Ok(port) => regs.acpi_enable = Some((unsafe { IoPort::new(port) }, acpi_enable)),
            Err(_) => log::warn!("acpi: SMI_CMD {smi_cmd:#x} is not an I/O port"),
        }
    }
    Ok(regs)
}

/// QEMU's ACPI PCI hot-plug register block (DESIGN.md: 0x18 bytes at
/// 0x0cc0 behind q35's ICH9 LPC, at 0xae00 behind pc's PIIX4 PM), found by
/// reading the chipset's PCI IDs through `cfg`; None for another chipset.
/// Call before the PCI registry's tasks run: with port-I/O configuration
/// access the two ID reads are not under the registry's lock.
pub fn pci_hotplug_block(cfg: &Ecam) -> Option<IoBlock> {
    let chipset = |df: DeviceFunction| {
        let id = cfg.read_word(df, 0);
        drivers::pcihp::base_for_chipset(id as u16, (id >> 16) as u16)
    };
    let base = chipset(DeviceFunction { bus: 0, device: 0x1f, function: 0 })
        .or_else(|| chipset(DeviceFunction { bus: 0, device: 1, function: 3 }))?;
    // SAFETY: the PCI IDs just read name QEMU's ICH9 LPC or PIIX4 PM, whose
    // ACPI PCI hot-plug block QEMU places at exactly this base, `reg::LEN`
    // bytes long (QEMU hw/acpi/pcihp.c); only platform::hotplug drives it.
    Some(unsafe { IoBlock::new(base, drivers::pcihp::reg::LEN) })
}
